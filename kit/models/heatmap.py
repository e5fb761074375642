"""Heatmap family: an smp encoder-decoder cut at the output stride and a 1x1 head to one map per point.

The decoder stops at the configured stride (Unet, MAnet and Linknet lose their finer blocks; decoders that end
coarser are followed by bilinear upsampling of the maps, finer ones by average pooling of the features), so at
stride 4 nothing of input resolution is computed. Targets are built on the device inside the loss (kit.codecs).
With the ``l2`` or ``adaptive_wing`` heatmap loss the maps are heatmaps regressed onto Gaussians; with ``kl`` or
none they are logits of a spatial softmax (``kl``: KL divergence to the normalised Gaussian target, as in
SimCC and Keypoint R-CNN; none: integral regression through soft-argmax and the coordinate loss).
The family's config section is ``HeatmapModelConfig``, its ``heatmap`` subsection ``HeatmapConfig``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from torch import nn

from kit.codecs.decoders import SOFT_ARGMAX, CodecDecoder
from kit.codecs.heatmap import HeatmapCodec, soft_argmax, to_input_coords
from kit.config import ConfigSection, LossConfig, ModelConfig, Pipeline
from kit.errors import KitError
from kit.losses import (
    coordinate_loss,
    heatmap_adaptive_wing,
    heatmap_l2,
    separable_entropy,
    softmax_cross_entropy,
)
from kit.models._registry import register_family
from kit.models.base import LandmarkModel
from kit.models.weights import hub_error, load_filtered, pretrained_state_dict

# Decoders that are a list of upsampling blocks, block i ending at the (i+1)-th coarsest feature stride.
_BLOCK_DECODERS = ("Unet", "MAnet", "Linknet")
_UNSUPPORTED = ("DPT",)  # needs prefix tokens of a ViT encoder
HEATMAP_VALUE_LOSSES = ("l2", "adaptive_wing")  # losses on heatmap values; the others train logits


class HeatmapConfig(ConfigSection):
    arch: str = "Unet"  # any segmentation_models_pytorch architecture name
    stride: Literal[1, 2, 4] = 4  # output stride of the heatmaps relative to the input
    decoder_channels: list[int] | None = None  # smp decoder widths, coarsest first; may stop at the stride
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # more smp architecture arguments (FPN pyramid widths)
    sigma: float = Field(1.5, gt=0)  # Gaussian sigma of target maps, in heatmap pixels
    sigma_end: float | None = Field(None, gt=0)  # when set, sigma moves linearly from `sigma` to this over the epochs
    # l2 / adaptive_wing: heatmap values onto peak-1 Gaussians; kl: spatial-softmax logits onto normalised Gaussians
    # (the demo's and GPU pipelines' choice, benchmarks/RECIPES.md); none: integral regression (coord_weight only)
    heatmap_loss: Literal["none", "l2", "adaptive_wing", "kl"] = "none"
    awing_weight: float = Field(10.0, ge=0)  # Adaptive Wing weighted loss map: 1 + this near the targets' peaks
    coord_weight: float = Field(1.0, ge=0)  # weight of the coordinate loss (section `loss`) on soft-argmax points
    # soft_argmax reads integral (logit) maps; local_soft_argmax and dark suit maps trained with a heatmap loss
    decoder: CodecDecoder = SOFT_ARGMAX
    window: int = Field(5, ge=1)  # window of local soft-argmax, heatmap pixels (odd)
    iterations: int = Field(5, ge=0)  # recentring steps of local soft-argmax (removes its pull to the window centre)
    dark_blur: float | None = Field(None, ge=0)  # sigma of DARK's modulation, px (null: final target sigma; 0: none)
    compile_loss: bool = True  # torch.compile the dense loss on CUDA: fuses target maps and loss into few kernels


class HeatmapModelConfig(ModelConfig):
    """The ``model`` section of the heatmap family; ``backbone`` is an smp encoder name, e.g. tu-resnet34."""

    family: Literal["heatmap"] = "heatmap"
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)

    @property
    def decoder(self) -> str:
        return self.heatmap.decoder

    def with_decoder(self, name: str) -> HeatmapModelConfig:
        """A copy with ``heatmap.decoder`` replaced by ``name``, validated (a KitError names the choices)."""
        try:
            heatmap = HeatmapConfig.model_validate({**self.heatmap.model_dump(), "decoder": name})
        except ValidationError as exc:
            raise KitError(f"--decoder {name!r}: {exc.errors()[0]['msg']}") from None
        return self.model_copy(update={"heatmap": heatmap})


class HeatmapHead(nn.Module):
    """1x1 convolution from decoder features to ``n_points`` maps, resampled by ``scale`` to the output stride.

    Pooling (scale < 1) runs before the convolution and upsampling after it, on the fewer channels; both are
    linear, so the order does not change the result.
    """

    def __init__(self, in_channels: int, n_points: int, scale: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, n_points, kernel_size=1)
        self.scale = scale
        nn.init.normal_(self.conv.weight, std=0.001)  # near-zero, flat maps at the start (HRNet's final layer)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale < 1:
            x = F.avg_pool2d(x, round(1 / self.scale))
        x = self.conv(x)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return x


def _dense_terms(
    outputs: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor, kind: str, awing: tuple[float, ...], coords: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Heatmap loss and soft-argmax coordinates (heatmap pixels): the only terms of size B x P x h x w.

    ``gy``, ``gx`` are the factors of the target maps: peak-1 Gaussians, or for ``kl`` the per-axis target
    distributions (the loss is then the cross-entropy; the caller subtracts the target's entropy). Casting to
    float32 happens here, so that under torch.compile it fuses into the loss instead of copying the maps.
    """
    outputs = outputs.float()
    if kind == "l2":
        loss = heatmap_l2(outputs, gy, gx)
    elif kind == "adaptive_wing":
        loss = heatmap_adaptive_wing(outputs, gy, gx, *awing)
    elif kind == "kl":
        loss = softmax_cross_entropy(outputs, gy, gx).mean()
    else:
        loss = outputs.new_zeros(())
    if not coords:
        return loss, None
    return loss, soft_argmax(outputs, "heatmap" if kind in HEATMAP_VALUE_LOSSES else "logits")


@functools.cache
def _compiled_dense_terms(kind: str, awing: tuple[float, ...], coords: bool):
    fn = functools.partial(_dense_terms, kind=kind, awing=awing, coords=coords)
    return torch.compile(fn, dynamic=False)


class HeatmapCriterion:
    """Training loss: heatmap loss against Gaussian targets + ``coord_weight`` x coordinate loss on soft-argmax."""

    def __init__(self, codec: HeatmapCodec, cfg: HeatmapConfig, loss_cfg: LossConfig):
        if cfg.heatmap_loss == "none" and cfg.coord_weight == 0:
            raise KitError("model.heatmap: heatmap_loss is 'none' and coord_weight is 0: nothing to train")
        self.codec = codec
        self.kind = cfg.heatmap_loss
        self.coord_weight = cfg.coord_weight
        self.loss_cfg = loss_cfg
        self.awing = (
            loss_cfg.awing_alpha,
            loss_cfg.awing_omega,
            loss_cfg.awing_epsilon,
            loss_cfg.awing_theta,
            cfg.awing_weight,
        )
        self.compile = cfg.compile_loss

    def _terms(self, outputs, gy, gx):
        args = (self.kind, self.awing, self.coord_weight > 0)
        if self.compile and outputs.is_cuda:
            try:
                return _compiled_dense_terms(*args)(outputs, gy, gx)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # a compiler problem must not stop training: fall back to eager
                warnings.warn(
                    f"torch.compile of the heatmap loss failed ({type(exc).__name__}: {exc}); running it eagerly",
                    stacklevel=2,
                )
                self.compile = False
        return _dense_terms(outputs, gy, gx, *args)

    def __call__(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        with torch.autocast(outputs.device.type, enabled=False):
            target = target.float()
            if self.kind == "kl":
                # KL = cross-entropy (the dense term) - the target's entropy (B x P, no gradient), which makes the
                # loss read 0 on a perfect map.
                log_ty, log_tx = self.codec.log_factors(target, outputs.shape[-2:], progress)
                loss, coords = self._terms(outputs, log_ty.exp(), log_tx.exp())
                loss = loss - separable_entropy(log_ty, log_tx).mean()
            else:
                gy, gx = self.codec.factors(target, outputs.shape[-2:], progress)
                loss, coords = self._terms(outputs, gy, gx)
            if coords is not None:
                points = to_input_coords(coords, self.codec.stride)
                loss = loss + self.coord_weight * coordinate_loss(points, target, self.loss_cfg)
            return loss


class HeatmapModel(LandmarkModel):
    """Encoder (``backbone``), decoder cut at the stride, and ``HeatmapHead``; outputs (B, P, h, w) maps."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        head: HeatmapHead,
        codec: HeatmapCodec,
        criterion: HeatmapCriterion,
        input_size: int,
        mean: tuple[float, float, float] = LandmarkModel.mean,
        std: tuple[float, float, float] = LandmarkModel.std,
    ):
        super().__init__()
        self.backbone = encoder
        self.decoder = decoder
        self.head = head
        self.codec = codec
        self.criterion = criterion
        self.n_points = head.conv.out_channels
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.backbone(x)))

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(outputs)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        return self.criterion(outputs, target, progress)


def _arch_class(name: str) -> type:
    archs = {cls.__name__.lower(): cls for cls in smp._MODEL_ARCHITECTURES if cls.__name__ not in _UNSUPPORTED}
    try:
        return archs[name.lower()]
    except KeyError:
        choices = ", ".join(sorted(cls.__name__ for cls in archs.values()))
        raise KitError(f"model.heatmap.arch: unknown architecture '{name}' (choose from {choices})") from None


def _arch_kwargs(arch: type, cfg: HeatmapConfig) -> dict:
    kwargs = dict(cfg.arch_kwargs)
    params = inspect.signature(arch.__init__).parameters
    if cfg.decoder_channels is not None:
        if "decoder_channels" not in params:
            raise KitError(f"model.heatmap.decoder_channels: not an argument of {arch.__name__}")
        depth = kwargs.get("encoder_depth", params["encoder_depth"].default if "encoder_depth" in params else 5)
        channels = list(cfg.decoder_channels)
        # Blocks past the stride are cut off: a list for the kept blocks only is padded for smp's check.
        kwargs["decoder_channels"] = channels + [channels[-1]] * (depth - len(channels))
    unknown = [k for k in kwargs if k not in params and k != "encoder_depth"]
    if unknown:
        raise KitError(f"model.heatmap.arch_kwargs: '{unknown[0]}' is not an argument of {arch.__name__}")
    return kwargs


def _smp_weights(cfg: HeatmapModelConfig) -> str | bool | None:
    """smp's ``encoder_weights``: always explicit, since smp's default ("imagenet") downloads."""
    if cfg.pretrained.source != "hub":
        return None
    return True if cfg.backbone.startswith("tu-") else "imagenet"


def _normalised_key(key: str) -> str:
    return key.replace(".", "_")


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a classifier's state dict into an smp encoder; for ``tu-`` encoders into the wrapped timm features model.

    timm's features-only models may flatten module paths (``stages.0`` -> ``stages_0``): keys are matched with
    dots and underscores treated alike.
    """
    target = getattr(encoder, "model", encoder)
    own = target.state_dict()
    by_normalised = {_normalised_key(k): k for k in own}
    mapped = {by_normalised.get(_normalised_key(k), k): v for k, v in state.items()}
    load_filtered(target, mapped, source)


def _preprocessing(cfg: HeatmapModelConfig, encoder: nn.Module) -> tuple[tuple, tuple]:
    pretrained_cfg = getattr(getattr(encoder, "model", None), "pretrained_cfg", None) or {}
    if "mean" in pretrained_cfg:
        return tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"])
    try:
        params = smp.encoders.get_preprocessing_params(cfg.backbone)
        return tuple(params["mean"]), tuple(params["std"])
    except Exception:  # encoders without preprocessing settings: ImageNet statistics
        return LandmarkModel.mean, LandmarkModel.std


def create_encoder_decoder(cfg: HeatmapModelConfig) -> tuple[nn.Module, nn.Module]:
    """The smp architecture's encoder (with the configured pretrained weights) and decoder; its head is dropped."""
    arch = _arch_class(cfg.heatmap.arch)
    kwargs = _arch_kwargs(arch, cfg.heatmap)
    weights = _smp_weights(cfg)
    try:
        net = arch(encoder_name=cfg.backbone, encoder_weights=weights, classes=1, **kwargs)
    except KitError:
        raise
    except Exception as exc:
        if weights is not None:
            raise hub_error(cfg.backbone, exc) from None
        raise KitError(
            f"model.backbone: cannot build {arch.__name__} with encoder '{cfg.backbone}' "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    state = pretrained_state_dict(cfg.pretrained, cfg.backbone)
    if state is not None:
        load_encoder_weights(net.encoder, state, str(cfg.pretrained.path or cfg.pretrained.package))
    return net.encoder, net.decoder


def _strides(features: list[torch.Tensor], size: int) -> list[int]:
    return [round(size / f.shape[-1]) for f in features]


def cut_decoder(decoder: nn.Module, arch: str, feature_strides: list[int], stride: int) -> nn.Module:
    """Drop the blocks of a block-list decoder (Unet, MAnet, Linknet) that would upsample finer than ``stride``."""
    if arch not in _BLOCK_DECODERS or not hasattr(decoder, "blocks"):
        return decoder
    block_strides = sorted(set(feature_strides), reverse=True)[1:]  # output stride of block i
    keep = sum(1 for s in block_strides[: len(decoder.blocks)] if s >= stride)
    decoder.blocks = decoder.blocks[: max(keep, 1)]
    return decoder


@torch.no_grad()
def _probe(encoder: nn.Module, decoder: nn.Module, size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encoder features and decoder output of a blank input, in eval mode (BatchNorm statistics stay put)."""
    modes = (encoder.training, decoder.training)
    encoder.eval()
    decoder.eval()
    try:
        features = encoder(torch.zeros(1, 3, size, size))
        return features, decoder(features)
    finally:
        encoder.train(modes[0])
        decoder.train(modes[1])


@register_family("heatmap", config=HeatmapModelConfig)
def create_heatmap(pipeline: Pipeline, n_points: int) -> HeatmapModel:
    """Encoder-decoder cut at ``model.heatmap.stride``, head, codec and loss from the pipeline."""
    cfg, hm, size = pipeline.model, pipeline.model.heatmap, pipeline.input.size
    codec = HeatmapCodec(
        stride=hm.stride,
        sigma=hm.sigma,
        sigma_end=hm.sigma_end,
        decoder=hm.decoder,
        window=hm.window,
        iterations=hm.iterations,
        dark_blur=hm.dark_blur,
        outputs="heatmap" if hm.heatmap_loss in HEATMAP_VALUE_LOSSES else "logits",
    )
    criterion = HeatmapCriterion(codec, hm, pipeline.loss)
    encoder, decoder = create_encoder_decoder(cfg)
    arch = _arch_class(hm.arch).__name__
    try:
        features = _probe(encoder, nn.Identity(), size)[0]
        decoder = cut_decoder(decoder, arch, _strides(features, size), hm.stride)
        out = _probe(encoder, decoder, size)[1]
    except RuntimeError as exc:
        raise KitError(
            f"input.size: {arch}({cfg.backbone}) cannot decode {size} px input ({str(exc).splitlines()[0]})"
        ) from None
    if size % out.shape[-1] or size % hm.stride:
        raise KitError(
            f"input.size: {arch}({cfg.backbone}) decodes {size} px to {out.shape[-1]} px maps, which do "
            f"not resample to stride {hm.stride} (use a multiple of 32)"
        )
    scale = (size // out.shape[-1]) / hm.stride
    head = HeatmapHead(out.shape[1], n_points, scale)
    mean, std = _preprocessing(cfg, encoder)
    return HeatmapModel(encoder, decoder, head, codec, criterion, size, mean, std)
