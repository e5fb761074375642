"""Regression family: a timm backbone, global pooling and a linear head to 2 x P normalised coordinates."""

from __future__ import annotations

from typing import Literal

import timm
import torch
from pydantic import Field
from timm.models import split_model_name_tag
from torch import nn

from kit.config import LossConfig, ModelConfig, Pipeline
from kit.errors import KitError
from kit.losses import coordinate_loss
from kit.models._registry import register_family
from kit.models.base import LandmarkModel
from kit.models.weights import hub_error, load_filtered, pretrained_state_dict


def to_normalised(points: torch.Tensor, size: int) -> torch.Tensor:
    """Input pixels (centres at integers) -> [-1, 1] across the input's edges."""
    return (points + 0.5) * (2.0 / size) - 1.0


def from_normalised(coords: torch.Tensor, size: int) -> torch.Tensor:
    return (coords + 1.0) * (size / 2.0) - 0.5


class RegressionConfig(ModelConfig):
    """The ``model`` section of the regression family; ``backbone`` is a timm model name."""

    family: Literal["regression"] = "regression"
    drop_rate: float = Field(0.0, ge=0, lt=1)  # dropout on the pooled backbone features, before the linear head


class RegressionModel(LandmarkModel):
    def __init__(self, backbone: nn.Module, n_points: int, input_size: int, loss_cfg: LossConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.n_points = n_points
        self.input_size = input_size
        self.loss_cfg = loss_cfg or LossConfig()
        self.head = nn.Linear(backbone.num_features, 2 * n_points)
        # Start from the mean shape (set_mean_shape): zero weights make the first steps refine, not search.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        cfg = backbone.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", self.mean)), tuple(cfg.get("std", self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).view(-1, self.n_points, 2)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        return from_normalised(outputs.float(), self.input_size)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        return coordinate_loss(self.decode(outputs), target, self.loss_cfg)

    def set_mean_shape(self, mean_points: torch.Tensor) -> None:
        with torch.no_grad():
            self.head.bias.copy_(to_normalised(mean_points.float(), self.input_size).reshape(-1))


def create_backbone(cfg: RegressionConfig) -> nn.Module:
    """A timm classifier without its classifier (``num_classes=0``), with the configured pretrained weights."""
    if not timm.is_model(split_model_name_tag(cfg.backbone)[0]):
        raise KitError(f"model.backbone: unknown timm model '{cfg.backbone}'")
    hub = cfg.pretrained.source == "hub"
    try:
        backbone = timm.create_model(cfg.backbone, pretrained=hub, num_classes=0, drop_rate=cfg.drop_rate)
    except Exception as exc:
        if hub:
            raise hub_error(cfg.backbone, exc) from None
        raise
    state = pretrained_state_dict(cfg.pretrained, cfg.backbone)
    if state is not None:
        load_filtered(backbone, state, str(cfg.pretrained.path or cfg.pretrained.package))
    return backbone


@register_family("regression", config=RegressionConfig)
def create_regression(pipeline: Pipeline, n_points: int) -> RegressionModel:
    backbone = create_backbone(pipeline.model)
    return RegressionModel(backbone, n_points=n_points, input_size=pipeline.input.size, loss_cfg=pipeline.loss)
