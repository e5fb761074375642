"""Model family registry: one decorator per family registers its config section and its factory.

The pipeline's ``model`` section is validated as the registered config class of its ``family``; ``create_model``
builds the model with the registered factory, naming the valid choices when the family is unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kit.config import ModelConfig
from kit.errors import KitError


@dataclass(frozen=True)
class _Family:
    config: type[ModelConfig]
    factory: Callable[..., nn.Module]


_FAMILIES: dict[str, _Family] = {}


def register_family(name: str, config: type[ModelConfig]) -> Callable:
    """Register model family ``name``: decorates ``fn(pipeline: Pipeline, n_points: int) -> LandmarkModel``.

    Args:
        name: the value of ``model.family`` that selects the family.
        config: the family's section, a ``ModelConfig`` subclass whose ``family`` defaults to ``name``.
    """
    if not issubclass(config, ModelConfig) or config.model_fields["family"].default != name:
        raise TypeError(f"register_family({name!r}): config must be a ModelConfig with family defaulting to {name!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES[name] = _Family(config, fn)
        return fn

    return decorator


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def family_config(name: str) -> type[ModelConfig] | None:
    """The config class of a registered family, or None."""
    family = _FAMILIES.get(name)
    return family.config if family else None


def create_model(pipeline, n_points: int) -> nn.Module:
    """Build the landmark model of ``pipeline.model.family``, with weights from ``pipeline.model.pretrained``."""
    family = pipeline.model.family
    try:
        factory = _FAMILIES[family].factory
    except KeyError:
        raise KitError(f"unknown model family '{family}' (choose from {', '.join(list_families())})") from None
    return factory(pipeline, n_points=n_points)
