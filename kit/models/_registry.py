"""Model family registry: one decorator per family, one factory that names the valid choices when it fails."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kit.errors import KitError

_FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def register_family(name: str) -> Callable:
    """Register ``fn(pipeline: Pipeline, n_points: int) -> LandmarkModel`` as a model family."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES[name] = fn
        return fn

    return decorator


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def create_model(pipeline, n_points: int) -> nn.Module:
    """Build the landmark model of ``pipeline.model.family``, with weights from ``pipeline.model.pretrained``."""
    family = pipeline.model.family
    try:
        factory = _FAMILIES[family]
    except KeyError:
        raise KitError(f"unknown model family '{family}' (choose from {', '.join(list_families())})") from None
    return factory(pipeline, n_points=n_points)
