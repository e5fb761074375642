"""Target codecs: coordinates <-> what a network outputs, and the decoder vocabulary (``kit.codecs.decoders``).

The package itself stays torch-free (the command line reads the vocabulary); the codecs load on first use.
"""

from kit.codecs.decoders import CODEC_DECODERS as DECODERS

__all__ = ["DECODERS", "HeatmapCodec", "SimCCCodec"]


def __getattr__(name: str):
    # Lazy: the codecs import torch.
    if name == "HeatmapCodec":
        from kit.codecs.heatmap import HeatmapCodec

        return HeatmapCodec
    if name == "SimCCCodec":
        from kit.codecs.simcc import SimCCCodec

        return SimCCCodec
    raise AttributeError(name)
