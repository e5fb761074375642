"""The decoder vocabulary: one registry that the codecs, the model families' configs and the CLI all take from."""

import typing

import pytest
import torch

from kit.cli._common import DecoderChoice
from kit.codecs import DECODERS, decoders, heatmap, simcc
from kit.codecs.decoders import CODEC_DECODERS, decoder_field, decoder_names, register_decoder
from kit.config import family_config
from kit.errors import KitError
from kit.models import list_families


def _decoder_choices(config: type) -> set[str]:
    """The choices of every ``decoder`` field of a config class and its subsections."""
    found = set()
    for name, field in config.model_fields.items():
        if name == "decoder" and typing.get_origin(field.annotation) is typing.Literal:
            found |= set(typing.get_args(field.annotation))
        elif isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            found |= _decoder_choices(field.annotation)
    return found


def test_every_name_comes_from_the_registry():
    families = {family: _decoder_choices(family_config(family)) for family in list_families()}
    assert set().union(*families.values()) == set(decoder_names())
    assert families["heatmap"] == families["simcc"] == set(CODEC_DECODERS) == set(DECODERS)
    assert tuple(d.value for d in DecoderChoice) == decoder_names()


@pytest.mark.parametrize("module", [heatmap, simcc])
def test_each_codec_implements_exactly_the_codec_decoders(module):
    assert module.DECODERS == CODEC_DECODERS and tuple(module._DECODE) == CODEC_DECODERS


def test_codecs_refuse_a_name_outside_their_decoders():
    with pytest.raises(KitError, match=r"heatmap decoder 'torchvision' \(choose from argmax, soft_argmax"):
        heatmap.HeatmapCodec().decode_heatmap_coords(torch.zeros(1, 1, 4, 4), "torchvision")
    with pytest.raises(KitError, match=r"simcc decoder 'udp'"):
        simcc.SimCCCodec(8).decode_bins(torch.zeros(1, 1, 32), "udp")


def test_a_config_field_takes_registered_names_only(monkeypatch):
    assert typing.get_args(decoder_field(("dark", "argmax"))) == ("dark", "argmax")
    with pytest.raises(ValueError, match="unregistered decoders"):
        decoder_field(("udp",))
    monkeypatch.setattr(decoders, "_DECODERS", list(decoder_names()))
    assert register_decoder("udp") == "udp" and decoder_names()[-1] == "udp"
    with pytest.raises(ValueError, match="registered already"):
        register_decoder("dark")
