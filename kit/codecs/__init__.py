"""Target codecs: coordinates <-> what a network outputs."""

from kit.codecs.heatmap import DECODERS, HeatmapCodec
from kit.codecs.simcc import SimCCCodec

__all__ = ["DECODERS", "HeatmapCodec", "SimCCCodec"]
