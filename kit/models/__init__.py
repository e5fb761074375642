"""Landmark model families, built by one factory from a typed pipeline config.

A family is one module: its config section, its factory and their registration (``register_family``).
"""

from kit.models import heatmap, keypoint_rcnn, regression, simcc  # noqa: F401  (register the families)
from kit.models._registry import create_model, family_config, list_families, register_family
from kit.models.base import LandmarkModel

__all__ = ["LandmarkModel", "create_model", "family_config", "list_families", "register_family"]
