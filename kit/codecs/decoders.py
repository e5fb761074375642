"""The decoder vocabulary: every way a network's outputs become points, by name, in one registry.

The codecs implement the decoders by these names, each model family's config accepts the ones its model decodes
with (``decoder_field``), and ``kit predict --decoder`` offers them all. Torch-free: the command line lists them
without loading torch.
"""

from __future__ import annotations

from typing import Any, Literal

_DECODERS: list[str] = []


def register_decoder(name: str) -> str:
    """Add decoder ``name`` to the vocabulary; returns it."""
    if name in _DECODERS:
        raise ValueError(f"decoder {name!r} is registered already")
    _DECODERS.append(name)
    return name


def decoder_names() -> tuple[str, ...]:
    """Every registered decoder, in registration order."""
    return tuple(_DECODERS)


def decoder_field(names: tuple[str, ...]) -> Any:
    """The type of a config's ``decoder`` field accepting ``names``: a ``Literal``, so pydantic names the choices.

    Raises:
        ValueError: a name is not in the vocabulary.
    """
    unknown = [name for name in names if name not in _DECODERS]
    if unknown:
        raise ValueError(f"unregistered decoders {unknown} (register them in kit.codecs.decoders)")
    return Literal[names]


ARGMAX = register_decoder("argmax")  # the highest pixel (bin)
SOFT_ARGMAX = register_decoder("soft_argmax")  # the expected position under the softmax of the whole map
LOCAL_SOFT_ARGMAX = register_decoder("local_soft_argmax")  # soft-argmax in a window around the maximum, recentred
DARK = register_decoder("dark")  # the maximum refined by a Taylor expansion of the log map (Zhang et al., 2020)
TORCHVISION = register_decoder("torchvision")  # keypoint_rcnn: maps upscaled to their box, then argmax (torchvision)

CODEC_DECODERS: tuple[str, ...] = (ARGMAX, SOFT_ARGMAX, LOCAL_SOFT_ARGMAX, DARK)  # the heatmap and SimCC codecs'
CodecDecoder = decoder_field(CODEC_DECODERS)
