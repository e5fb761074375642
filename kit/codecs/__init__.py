"""Target codecs: coordinates <-> what a network outputs."""

from kit.codecs.heatmap import DECODERS, HeatmapCodec

__all__ = ["DECODERS", "HeatmapCodec"]
