"""SimCC family: a timm backbone and a light head classifying each point's x and y over sub-pixel bins.

The head is RTMPose's without its gated attention unit: backbone features (B, C, h, w) -> convolution to one map
per point (B, P, h, w) -> each map flattened to a point token of h x w values -> ScaleNorm, linear to
``token_dim`` and GELU -> two linear classifiers shared by all points, over the x bins and the y bins
(``split_ratio`` x input size each). Targets are Gaussian-smoothed labels with a KL loss, decoding a sub-pixel
estimate around the maximum bin; both live in the codec (kit.codecs.simcc). The features are the backbone's
output at stride 32 or, with ``feature_stride`` 16 or 8, the stage at that stride (the later stages are pruned):
at small inputs a stride-32 map has too few positions for the tokens. The family's config section is
``SimCCModelConfig``, its ``simcc`` subsection ``SimCCConfig``.
"""

from __future__ import annotations

from typing import Literal

import timm
import torch
from pydantic import Field, ValidationError, field_validator
from timm.models import split_model_name_tag
from torch import nn

from kit.codecs.decoders import LOCAL_SOFT_ARGMAX, CodecDecoder
from kit.codecs.simcc import SimCCCodec, from_bins, soft_argmax_1d
from kit.config import ConfigSection, LossConfig, ModelConfig, Pipeline
from kit.errors import KitError
from kit.losses import coordinate_loss
from kit.models._registry import register_family
from kit.models.base import LandmarkModel
from kit.models.weights import hub_error, load_filtered, pretrained_state_dict


class SimCCConfig(ConfigSection):
    split_ratio: float = Field(2.0, gt=0)  # bins per input pixel; bins per axis = split_ratio x input.size
    sigma: float = Field(2.0, gt=0)  # Gaussian label smoothing, in bins
    feature_stride: Literal[8, 16, 32] = 32  # 32: the backbone's output; 16, 8: the stage at that stride
    kernel_size: int = Field(1, ge=1)  # of the convolution from features to point maps (odd; RTMPose uses 7)
    token_dim: int = Field(256, ge=1)  # width of a point token before the classifiers
    coord_weight: float = Field(0.0, ge=0)  # weight of the coordinate loss (section `loss`) on soft-argmax points
    decoder: CodecDecoder = LOCAL_SOFT_ARGMAX
    window: int = Field(11, ge=1)  # window of local soft-argmax, bins (odd)
    iterations: int = Field(5, ge=0)  # recentring steps of local soft-argmax

    @field_validator("kernel_size", "window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


class SimCCModelConfig(ModelConfig):
    """The ``model`` section of the SimCC family; ``backbone`` is a timm model name."""

    family: Literal["simcc"] = "simcc"
    simcc: SimCCConfig = Field(default_factory=SimCCConfig)

    @property
    def decoder(self) -> str:
        return self.simcc.decoder

    def with_decoder(self, name: str) -> SimCCModelConfig:
        """A copy with ``simcc.decoder`` replaced by ``name``, validated (a KitError names the choices)."""
        try:
            simcc = SimCCConfig.model_validate({**self.simcc.model_dump(), "decoder": name})
        except ValidationError as exc:
            raise KitError(f"--decoder {name!r}: {exc.errors()[0]['msg']}") from None
        return self.model_copy(update={"simcc": simcc})


class ScaleNorm(nn.Module):
    """``g x / ||x|| x sqrt(d)`` over the last dimension (RTMPose's token normalisation), one learned scale."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.norm(dim=-1, keepdim=True) * self.scale).clamp_min(self.eps) * self.g


class SimCCHead(nn.Module):
    """Features (B, C, h, w) -> logits (B, P, 2 n): the x bins, then the y bins."""

    def __init__(self, in_channels: int, spatial: int, n_points: int, bins: int, token_dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, n_points, kernel_size, padding=kernel_size // 2)
        self.norm = ScaleNorm(spatial)
        self.token = nn.Linear(spatial, token_dim)
        self.act = nn.GELU()
        self.cls_x = nn.Linear(token_dim, bins)
        self.cls_y = nn.Linear(token_dim, bins)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.act(self.token(self.norm(self.conv(features).flatten(2))))
        # The classifiers run in float32: sub-bin decoding reads differences of neighbouring logits.
        with torch.autocast(features.device.type, enabled=False):
            tokens = tokens.float()
            return torch.cat([self.cls_x(tokens), self.cls_y(tokens)], dim=-1)


class SimCCModel(LandmarkModel):
    """timm ``backbone`` (features at ``stage``, or its whole output when None) and ``SimCCHead``."""

    def __init__(
        self,
        backbone: nn.Module,
        stage: int | None,
        head: SimCCHead,
        codec: SimCCCodec,
        n_points: int,
        coord_weight: float = 0.0,
        loss_cfg: LossConfig | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.stage = stage
        self.head = head
        self.codec = codec
        self.n_points = n_points
        self.input_size = codec.input_size
        self.coord_weight = coord_weight
        self.loss_cfg = loss_cfg or LossConfig()
        cfg = backbone.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", self.mean)), tuple(cfg.get("std", self.std))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.backbone.forward_features(x)
        return self.backbone.forward_intermediates(x, indices=[self.stage], intermediates_only=True)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(outputs)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        with torch.autocast(outputs.device.type, enabled=False):
            target = target.float()
            loss = self.codec.loss(outputs, target)
            if self.coord_weight > 0:
                bins = soft_argmax_1d(outputs.float().unflatten(-1, (2, self.codec.bins)))
                points = from_bins(bins, self.codec.split_ratio)
                loss = loss + self.coord_weight * coordinate_loss(points, target, self.loss_cfg)
            return loss


def create_backbone(cfg: SimCCModelConfig) -> tuple[nn.Module, int | None]:
    """The timm classifier without its classifier, pruned after the feature stage, with its pretrained weights.

    Returns the backbone and the index of the feature stage (None: the backbone's whole output, stride 32).
    """
    if not timm.is_model(split_model_name_tag(cfg.backbone)[0]):
        raise KitError(f"model.backbone: unknown timm model '{cfg.backbone}'")
    hub = cfg.pretrained.source == "hub"
    try:
        backbone = timm.create_model(cfg.backbone, pretrained=hub, num_classes=0)
    except Exception as exc:
        if hub:
            raise hub_error(cfg.backbone, exc) from None
        raise
    state = pretrained_state_dict(cfg.pretrained, cfg.backbone)
    if state is not None:
        load_filtered(backbone, state, str(cfg.pretrained.path or cfg.pretrained.package))
    stride = cfg.simcc.feature_stride
    if stride == 32:
        return backbone, None
    stages = [i for i, info in enumerate(backbone.feature_info) if info["reduction"] == stride]
    if not stages or not hasattr(backbone, "forward_intermediates"):
        raise KitError(f"model.simcc.feature_stride: {cfg.backbone} has no feature stage at stride {stride}")
    backbone.prune_intermediate_layers([stages[-1]], prune_head=True)
    return backbone, stages[-1]


@torch.no_grad()
def _feature_shape(model: SimCCModel, size: int) -> tuple[int, int, int]:
    """(C, h, w) of the features of a blank input, in eval mode (BatchNorm statistics stay put)."""
    mode = model.backbone.training
    model.backbone.eval()
    try:
        return tuple(model.features(torch.zeros(1, 3, size, size)).shape[1:])
    finally:
        model.backbone.train(mode)


@register_family("simcc", config=SimCCModelConfig)
def create_simcc(pipeline: Pipeline, n_points: int) -> SimCCModel:
    """Backbone, head sized from its features at the input size, and codec from the pipeline."""
    cfg, sc, size = pipeline.model, pipeline.model.simcc, pipeline.input.size
    codec = SimCCCodec(size, sc.split_ratio, sc.sigma, sc.decoder, sc.window, sc.iterations)
    backbone, stage = create_backbone(cfg)
    model = SimCCModel(backbone, stage, nn.Identity(), codec, n_points, sc.coord_weight, pipeline.loss)
    channels, h, w = _feature_shape(model, size)
    model.head = SimCCHead(channels, h * w, n_points, codec.bins, sc.token_dim, sc.kernel_size)
    return model
