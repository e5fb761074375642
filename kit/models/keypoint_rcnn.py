"""Keypoint R-CNN family: torchvision's keypoint branch on an FPN, fed one box per image, the whole face crop.

torchvision's ``KeypointRCNN`` resizes and normalises inside (``GeneralizedRCNNTransform``, ``min_size`` 800),
proposes boxes (RPN), classifies them (box head) and only then pools each box for its keypoint head; in training
it takes per-image target dicts (boxes, labels, keypoints with visibility) and returns a loss dict. Here every
image is a face crop whose box is known, the whole input, so the model keeps only the keypoint path, built from
torchvision's own modules: the ResNet body and FPN (``backbone``, ``fpn``; torchvision's ``backbone.body`` and
``backbone.fpn``), ``keypoint_roi_pool`` (``MultiScaleRoIAlign``), ``keypoint_head`` (``KeypointRCNNHeads``) and
``keypoint_predictor`` (``KeypointRCNNPredictor``: deconvolution, then bilinear upscaling; torchvision's
``roi_heads.keypoint_*``), so a COCO checkpoint maps onto them by prefix. ``forward`` takes the kit's normalised
crop (ImageNet statistics for torchvision ResNets: the detector's own normalisation; the crop size plays
``min_size``/``max_size``) and returns the keypoint logits (B, P, M, M) of the full-image box, with
``M = roi_size x 2 x upscale`` (torchvision: 14 x 2 x 2 = 56). Loss and decoding are the kit's:

- the loss is torchvision's ``keypointrcnn_loss`` (``target: one_hot``: cross-entropy on the map pixel of each
  point, points outside the box dropped) or the same cross-entropy against a Gaussian of ``sigma`` map pixels,
  reported as a KL divergence (``target: gaussian``, the default: the one-hot target floors each point to its map
  pixel, which costs sub-pixel precision);
- decoding is torchvision's ``heatmaps_to_keypoints`` (``decoder: torchvision``: bicubic upscaling of each map to
  the box size, then argmax) or a decoder of kit.codecs.heatmap on the logits (soft-argmax, local soft-argmax,
  DARK), returning input pixels. Map pixel ``j`` covers input pixels ``[j S / M, (j + 1) S / M)``, as in
  torchvision's discretisation, so a flip of the input is a flip of the maps.

The RPN and box head are not built: their parameters would get no gradient, which DistributedDataParallel refuses.
For the same reason the FPN is evaluated only at the level that torchvision's pooler assigns the full-image box
(``LevelMapper``: a 224 px box at level 4, clamped to levels 2-5) and its blocks for other levels, kept for
checkpoint compatibility, are frozen. Backbones: a torchvision ResNet (``resnet_fpn_backbone``'s layout, with
FrozenBatchNorm2d and the top 3 stages trained by default) or ``tu-`` and a timm model read at strides 4-32
(``tu-tf_efficientnet_lite0`` with package weights needs no network). Weights: ``file`` takes a torchvision
detection checkpoint (the COCO Keypoint R-CNN: body, FPN and keypoint head load, the 17-keypoint predictor is
replaced) or a classifier's (the body only); ``hub`` downloads torchvision's COCO Keypoint R-CNN for ``resnet50``,
ImageNet weights for other ResNets, timm's for ``tu-`` models.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import timm
import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field, ValidationError, field_validator, model_validator
from timm.models import split_model_name_tag
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints, keypointrcnn_loss
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from kit.codecs.decoders import CODEC_DECODERS, LOCAL_SOFT_ARGMAX, TORCHVISION, decoder_field
from kit.codecs.heatmap import HeatmapCodec
from kit.config import ConfigSection, ModelConfig, Pipeline
from kit.errors import KitError
from kit.losses import gaussian_map_kl
from kit.models._registry import register_family
from kit.models.base import LandmarkModel
from kit.models.weights import hub_error, load_filtered, pretrained_state_dict

DECODERS: tuple[str, ...] = (TORCHVISION, *CODEC_DECODERS)  # torchvision's own, then the heatmap codec's
_STRIDES = (4, 8, 16, 32)  # FPN levels 2-5, named "0"-"3" as in torchvision
_DETECTION_PREFIXES = {  # torchvision KeypointRCNN state dict -> this model
    "backbone.body.": "backbone",
    "backbone.fpn.": "fpn",
    "roi_heads.keypoint_head.": "keypoint_head",
}


class KeypointRCNNConfig(ConfigSection):
    fpn_channels: int = Field(256, ge=1)  # FPN width (torchvision: 256)
    roi_size: int = Field(14, ge=1)  # output side of keypoint_roi_pool (torchvision: 14)
    head_channels: int = Field(512, ge=1)  # width of the keypoint head's 3x3 convolutions (torchvision: 512)
    head_layers: int = Field(8, ge=1)  # their number (torchvision: 8)
    upscale: int = Field(2, ge=1)  # bilinear upscaling after the predictor's stride-2 deconvolution (torchvision: 2)
    frozen_bn: bool | None = None  # torchvision ResNets: FrozenBatchNorm2d (None: yes, as torchvision fine-tunes)
    trainable_layers: int | None = Field(None, ge=0, le=5)  # torchvision ResNets: stages trained from the top (3)
    target: Literal["gaussian", "one_hot"] = "gaussian"  # one_hot: torchvision's keypointrcnn_loss
    sigma: float = Field(1.0, gt=0)  # Gaussian target, map pixels
    decoder: decoder_field(DECODERS) = LOCAL_SOFT_ARGMAX
    window: int = Field(5, ge=1)  # window of local soft-argmax, map pixels (odd)
    iterations: int = Field(5, ge=0)  # recentring steps of local soft-argmax

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value

    @property
    def map_size(self) -> int:
        """Side of the keypoint maps: the pooled RoI, doubled by the deconvolution, then upscaled."""
        return self.roi_size * 2 * self.upscale


class KeypointRCNNModelConfig(ModelConfig):
    """The ``model`` section of the Keypoint R-CNN family; ``backbone`` is a torchvision ResNet or ``tu-<timm>``."""

    family: Literal["keypoint_rcnn"] = "keypoint_rcnn"
    backbone: str = "resnet50"
    keypoint_rcnn: KeypointRCNNConfig = Field(default_factory=KeypointRCNNConfig)

    @model_validator(mode="after")
    def _resnet_options(self) -> KeypointRCNNModelConfig:
        section = self.keypoint_rcnn
        if self.backbone.startswith("tu-") and (section.frozen_bn is not None or section.trainable_layers is not None):
            raise ValueError("keypoint_rcnn.frozen_bn and trainable_layers apply to torchvision ResNet backbones only")
        return self

    @property
    def decoder(self) -> str:
        return self.keypoint_rcnn.decoder

    def with_decoder(self, name: str) -> KeypointRCNNModelConfig:
        """A copy with ``keypoint_rcnn.decoder`` replaced by ``name``, validated (a KitError names the choices)."""
        try:
            section = KeypointRCNNConfig.model_validate({**self.keypoint_rcnn.model_dump(), "decoder": name})
        except ValidationError as exc:
            raise KitError(f"--decoder {name!r}: {exc.errors()[0]['msg']}") from None
        return self.model_copy(update={"keypoint_rcnn": section})


def roi_level(size: int) -> int:
    """FPN level ("0" = stride 4) from which torchvision's ``MultiScaleRoIAlign`` pools a ``size`` x ``size`` box."""
    return min(max(math.floor(4 + math.log2(size / 224) + 1e-6), 2), 5) - 2


def fpn_level(fpn: FeaturePyramidNetwork, features: list[torch.Tensor], level: int) -> torch.Tensor:
    """Output ``level`` of torchvision's FPN, computing only the top-down path down to that level."""
    inner = fpn.get_result_from_inner_blocks(features[-1], -1)
    for idx in range(len(features) - 2, level - 1, -1):
        lateral = fpn.get_result_from_inner_blocks(features[idx], idx)
        inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
    return fpn.get_result_from_layer_blocks(inner, level)


def to_map_coords(points: torch.Tensor, size: int, map_size: int) -> torch.Tensor:
    """Input pixels (centres at integers) of a ``size`` crop -> pixels of its ``map_size`` keypoint map."""
    return (points + 0.5) * (map_size / size) - 0.5


def from_map_coords(coords: torch.Tensor, size: int, map_size: int) -> torch.Tensor:
    return (coords + 0.5) * (size / map_size) - 0.5


class TimmFeatures(nn.Module):
    """A timm classifier read at its stride 4, 8, 16 and 32 stages (later layers pruned): OrderedDict "0"-"3"."""

    def __init__(self, model: nn.Module, stages: list[int]):
        super().__init__()
        self.model = model
        self.stages = stages

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.model.forward_intermediates(x, indices=self.stages, intermediates_only=True)
        return OrderedDict((str(i), f) for i, f in enumerate(features))


class KeypointRCNNModel(LandmarkModel):
    """Body (``backbone``), FPN, keypoint RoI pool, head and predictor on the full-image box; (B, P, M, M) logits."""

    def __init__(
        self,
        backbone: nn.Module,
        fpn: FeaturePyramidNetwork,
        cfg: KeypointRCNNConfig,
        n_points: int,
        input_size: int,
        mean: tuple[float, float, float] = LandmarkModel.mean,
        std: tuple[float, float, float] = LandmarkModel.std,
    ):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.level = roi_level(input_size)
        self.keypoint_roi_pool = MultiScaleRoIAlign([str(self.level)], output_size=cfg.roi_size, sampling_ratio=2)
        self.keypoint_head = KeypointRCNNHeads(cfg.fpn_channels, [cfg.head_channels] * cfg.head_layers)
        self.keypoint_predictor = KeypointRCNNPredictor(cfg.head_channels, n_points)
        self.keypoint_predictor.up_scale = cfg.upscale
        self.cfg = cfg
        self.n_points = n_points
        self.input_size = input_size
        self.map_size = cfg.map_size
        # The codec's decoders on the logit maps, with map pixels as its pixels; DARK without modulation.
        self.map_codec = HeatmapCodec(stride=1, window=cfg.window, iterations=cfg.iterations, dark_blur=0.0)
        self.mean, self.std = tuple(mean), tuple(std)
        # FPN blocks the full-image box never reads: frozen, so that every trained parameter gets a gradient.
        for idx, block in enumerate(fpn.inner_blocks):
            block.requires_grad_(idx >= self.level)
        for idx, block in enumerate(fpn.layer_blocks):
            block.requires_grad_(idx == self.level)

    def boxes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One box per image, the whole input, in torchvision's (x1, y1, x2, y2) continuous coordinates."""
        size = self.input_size
        return [x.new_tensor([[0.0, 0.0, size, size]], dtype=torch.float32)] * len(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = fpn_level(self.fpn, list(self.backbone(x).values()), self.level)
        shapes = [(self.input_size, self.input_size)] * len(x)
        pooled = self.keypoint_roi_pool({str(self.level): features}, self.boxes(x), shapes)
        return self.keypoint_predictor(self.keypoint_head(pooled))

    def decode(self, outputs: torch.Tensor, decoder: str | None = None) -> torch.Tensor:
        decoder = decoder or self.cfg.decoder
        with torch.autocast(outputs.device.type, enabled=False):
            if decoder == TORCHVISION:
                rois = torch.cat(self.boxes(outputs))
                return heatmaps_to_keypoints(outputs.float(), rois)[0][..., :2] - 0.5
            if decoder not in CODEC_DECODERS:
                raise KitError(f"keypoint_rcnn decoder '{decoder}' (choose from {', '.join(DECODERS)})")
            coords = self.map_codec.decode_heatmap_coords(outputs, decoder)
            return from_map_coords(coords, self.input_size, self.map_size)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        with torch.autocast(outputs.device.type, enabled=False):
            logits, target = outputs.float(), target.float()
            if self.cfg.target == "one_hot":
                # torchvision's targets: continuous coordinates (pixel centres at +0.5), all points visible.
                keypoints = torch.cat([target + 0.5, torch.ones_like(target[..., :1])], dim=-1).unsqueeze(1)
                matched = [torch.zeros(1, dtype=torch.long, device=logits.device)] * len(logits)
                return keypointrcnn_loss(logits, self.boxes(logits), list(keypoints), matched)
            coords = to_map_coords(target, self.input_size, self.map_size)
            return gaussian_map_kl(logits, coords, self.cfg.sigma).mean()


def _resnet_body(name: str, cfg: KeypointRCNNConfig) -> tuple[nn.Module, FeaturePyramidNetwork]:
    """torchvision's ``resnet_fpn_backbone`` layout for ResNet ``name``, with ``fpn_channels`` FPN channels."""
    if name not in torchvision.models.list_models(torchvision.models) or not name.startswith(("res", "wide_res")):
        raise KitError(f"model.backbone: '{name}' is neither a torchvision ResNet (e.g. resnet50) nor tu-<timm model>")
    norm = FrozenBatchNorm2d if cfg.frozen_bn in (None, True) else nn.BatchNorm2d
    resnet = torchvision.models.get_model(name, weights=None, norm_layer=norm)
    trainable = 3 if cfg.trainable_layers is None else cfg.trainable_layers
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
    for key, parameter in resnet.named_parameters():
        parameter.requires_grad_(key.startswith(tuple(train)))
    top = resnet.inplanes  # channels of layer4
    extractor = BackboneWithFPN(
        resnet,
        return_layers={f"layer{i + 1}": str(i) for i in range(4)},
        in_channels_list=[top // 8, top // 4, top // 2, top],
        out_channels=cfg.fpn_channels,
    )
    return extractor.body, extractor.fpn


def _timm_body(name: str, cfg: KeypointRCNNModelConfig) -> tuple[TimmFeatures, FeaturePyramidNetwork]:
    if not timm.is_model(split_model_name_tag(name)[0]):
        raise KitError(f"model.backbone: unknown timm model '{name}'")
    hub = cfg.pretrained.source == "hub"
    try:
        model = timm.create_model(name, pretrained=hub, num_classes=0)
    except Exception as exc:
        if hub:
            raise hub_error(name, exc) from None
        raise
    info = {f["reduction"]: i for i, f in enumerate(getattr(model, "feature_info", []))}
    if not all(s in info for s in _STRIDES) or not hasattr(model, "forward_intermediates"):
        raise KitError(f"model.backbone: {name} has no feature stages at strides 4, 8, 16 and 32")
    stages = [info[s] for s in _STRIDES]
    channels = [model.feature_info[i]["num_chs"] for i in stages]
    model.prune_intermediate_layers(stages, prune_head=True)
    return TimmFeatures(model, stages), FeaturePyramidNetwork(channels, cfg.keypoint_rcnn.fpn_channels)


def _hub_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's COCO Keypoint R-CNN for resnet50, else the ResNet's ImageNet classifier (downloads)."""
    try:
        if name == "resnet50":
            weights = torchvision.models.detection.KeypointRCNN_ResNet50_FPN_Weights.DEFAULT
        else:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        return weights.get_state_dict(progress=False)
    except Exception as exc:
        raise hub_error(name, exc) from None


def load_weights(model: KeypointRCNNModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision detection checkpoint (body, FPN, keypoint head; the predictor when it fits) or a
    classifier's (the body).

    Raises:
        KitError: naming the missing or mismatched tensors.
    """
    body = getattr(model.backbone, "model", model.backbone)
    if not any(k.startswith("backbone.body.") for k in state):
        load_filtered(body, state, source)
        return
    if body is not model.backbone:
        raise KitError(f"{source}: a torchvision detection checkpoint needs a torchvision ResNet model.backbone")
    for prefix, name in _DETECTION_PREFIXES.items():
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        load_filtered(getattr(model, name), part, f"{source} ({prefix.rstrip('.')})")
    prefix = "roi_heads.keypoint_predictor."
    predictor = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    own = model.keypoint_predictor.state_dict()
    if predictor.keys() == own.keys() and all(v.shape == own[k].shape for k, v in predictor.items()):
        model.keypoint_predictor.load_state_dict(predictor)  # same points: a fine-tuned checkpoint, not COCO's 17


@register_family("keypoint_rcnn", config=KeypointRCNNModelConfig)
def create_keypoint_rcnn(pipeline: Pipeline, n_points: int) -> KeypointRCNNModel:
    """Body and FPN, keypoint branch for ``n_points`` at the input size, weights from ``model.pretrained``."""
    cfg, size = pipeline.model, pipeline.input.size
    if cfg.backbone.startswith("tu-"):
        body, fpn = _timm_body(cfg.backbone.removeprefix("tu-"), cfg)
        mean = tuple(body.model.pretrained_cfg.get("mean", LandmarkModel.mean))
        std = tuple(body.model.pretrained_cfg.get("std", LandmarkModel.std))
    else:
        body, fpn = _resnet_body(cfg.backbone, cfg.keypoint_rcnn)
        mean, std = LandmarkModel.mean, LandmarkModel.std  # torchvision's GeneralizedRCNNTransform normalisation
    model = KeypointRCNNModel(body, fpn, cfg.keypoint_rcnn, n_points, size, mean, std)
    source = cfg.pretrained.source
    if source == "hub" and not cfg.backbone.startswith("tu-"):
        load_weights(model, _hub_state(cfg.backbone), f"torchvision {cfg.backbone} weights")
    elif source in ("file", "package"):
        state = pretrained_state_dict(cfg.pretrained, cfg.backbone)
        load_weights(model, state, str(cfg.pretrained.path or cfg.pretrained.package))
    return model
