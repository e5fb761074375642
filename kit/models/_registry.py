"""Model family registry: one decorator per family registers its config section and its factory.

The config section goes to ``kit.config``'s registry, which validates the pipeline's ``model`` section as the class
of its ``family``; ``create_model`` builds the model with the registered factory, naming the valid choices when the
family is unknown.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kit.config import ModelConfig, family_config, register_family_config
from kit.errors import KitError

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_family(name: str, config: type[ModelConfig]) -> Callable:
    """Register model family ``name``: decorates ``fn(pipeline: Pipeline, n_points: int) -> LandmarkModel``.

    Args:
        name: the value of ``model.family`` that selects the family.
        config: the family's section, a ``ModelConfig`` subclass whose ``family`` defaults to ``name``.
    """
    if not issubclass(config, ModelConfig) or config.model_fields["family"].default != name:
        raise TypeError(f"register_family({name!r}): config must be a ModelConfig with family defaulting to {name!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        register_family_config(config)
        _FACTORIES[name] = fn
        return fn

    return decorator


def list_families() -> list[str]:
    return sorted(_FACTORIES)


def create_model(pipeline, n_points: int) -> nn.Module:
    """Build the landmark model of ``pipeline.model.family``, with weights from ``pipeline.model.pretrained``."""
    family = pipeline.model.family
    try:
        factory = _FACTORIES[family]
    except KeyError:
        raise KitError(f"unknown model family '{family}' (choose from {', '.join(list_families())})") from None
    return factory(pipeline, n_points=n_points)


__all__ = ["create_model", "family_config", "list_families", "register_family"]
