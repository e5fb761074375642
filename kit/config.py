"""Typed pipeline configs: YAML files in ``pipelines/``, validated at load, overridable from the command line.

An unknown key or a wrong type is an error that names the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kit.errors import KitError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PretrainedConfig(_Strict):
    source: Literal["none", "hub", "file", "package"] = "none"  # where the backbone's starting weights come from
    path: Path | None = None  # a .pth / .safetensors checkpoint, for source=file
    package: str | None = None  # e.g. efficientnet-lite0, for source=package (see `kit weights import`)

    @model_validator(mode="after")
    def _needs(self) -> PretrainedConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs 'path'")
        if self.source == "package" and self.package is None:
            raise ValueError("source 'package' needs 'package' (e.g. efficientnet-lite0)")
        return self


class HeatmapConfig(_Strict):
    arch: str = "Unet"  # any segmentation_models_pytorch architecture name
    stride: Literal[1, 2, 4] = 4  # output stride of the heatmaps relative to the input
    decoder_channels: list[int] | None = None  # smp decoder widths, coarsest first; may stop at the stride
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # more smp architecture arguments (FPN pyramid widths)
    sigma: float = Field(1.5, gt=0)  # Gaussian sigma of target maps, in heatmap pixels
    sigma_end: float | None = Field(None, gt=0)  # when set, sigma moves linearly from `sigma` to this over the epochs
    heatmap_loss: Literal["none", "l2", "adaptive_wing"] = "none"
    awing_weight: float = Field(10.0, ge=0)  # Adaptive Wing weighted loss map: 1 + this near the targets' peaks
    coord_weight: float = Field(1.0, ge=0)  # weight of the coordinate loss (section `loss`) on soft-argmax points
    # soft_argmax reads integral (logit) maps; local_soft_argmax and dark suit maps trained with a heatmap loss
    decoder: Literal["argmax", "soft_argmax", "local_soft_argmax", "dark"] = "soft_argmax"
    window: int = Field(5, ge=1)  # window of local soft-argmax, heatmap pixels (odd)
    iterations: int = Field(5, ge=0)  # recentring steps of local soft-argmax (removes its pull to the window centre)
    dark_blur: float = Field(1.0, ge=0)  # Gaussian smoothing before DARK refinement, heatmap pixels (0: none)
    compile_loss: bool = True  # torch.compile the dense loss on CUDA: fuses target maps and loss into few kernels


class ModelConfig(_Strict):
    family: Literal["regression", "heatmap"] = "regression"
    backbone: str = "resnet34"  # timm model name (regression) or smp encoder name, e.g. tu-resnet34 (heatmap)
    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)
    drop_rate: float = 0.0
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)


class InputConfig(_Strict):
    size: int = Field(128, ge=16)  # model input, pixels (square)
    margin: float = Field(0.0, ge=-0.4, le=1.0)  # crop side = shorter image side x (1 + 2 x margin)
    pad: int = Field(16, ge=0)  # extra border kept in the crop cache so augmentation does not cut points


class AugmentConfig(_Strict):
    hflip: float = Field(0.5, ge=0, le=1)  # probability; flips also swap left/right point identities
    scale: float = Field(0.1, ge=0, le=0.9)  # random zoom within 1 +- scale
    rotate: float = Field(15.0, ge=0, le=180)  # degrees
    shift: float = Field(0.05, ge=0, le=0.5)  # fraction of the input size
    color: float = Field(0.5, ge=0, le=1)  # probability of brightness/contrast/hue jitter
    blur: float = Field(0.1, ge=0, le=1)
    noise: float = Field(0.1, ge=0, le=1)
    cutout: float = Field(0.2, ge=0, le=1)
    gpu: bool = False  # affine + flip + normalise on the device from the uint8 crop cache (fast path for CUDA)


class LossConfig(_Strict):
    name: Literal["mse", "l1", "smooth_l1", "wing", "adaptive_wing"] = "mse"
    # Wing (Feng et al. 2018) and Adaptive Wing (Wang et al. 2019) parameters, in input-crop pixels.
    wing_w: float = 10.0
    wing_epsilon: float = 2.0
    awing_alpha: float = 2.1
    awing_omega: float = 14.0
    awing_epsilon: float = 1.0
    awing_theta: float = 0.5
    smooth_l1_beta: float = 1.0


class OptimConfig(_Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)  # head learning rate
    backbone_lr_mult: float = Field(0.3, gt=0)  # backbone lr = lr x this
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    clip_grad: float | None = 5.0  # max gradient norm; None disables


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    freeze_backbone_epochs: int = Field(0, ge=0)
    ema: float | None = Field(None, gt=0, lt=1)  # decay of an EMA of the weights used for validation
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    max_train_batches: int | None = None  # cap per epoch (smoke tests)
    report_images: int = Field(12, ge=0)


class TTAConfig(_Strict):
    hflip: bool = False  # average with the mirrored prediction (mapped back through the flip permutation)


class Pipeline(_Strict):
    name: str
    model: ModelConfig = Field(default_factory=ModelConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tta: TTAConfig = Field(default_factory=TTAConfig)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise KitError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML, so ``1e-3``, ``true``, ``[1, 2]`` work)."""
    for item in overrides:
        if "=" not in item:
            raise KitError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        _set_dotted(tree, dotted.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: key '{key}': {first['msg']}"


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Load, override and validate a pipeline YAML.

    Raises:
        KitError: unreadable YAML, an unknown key or a wrong type, naming the key and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: pipeline file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KitError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise KitError(f"{path}: top level must be a mapping")
    tree.setdefault("name", path.stem)
    apply_overrides(tree, overrides or [])
    try:
        return Pipeline.model_validate(tree)
    except ValidationError as exc:
        raise KitError(_describe(exc, str(path))) from None


def pipeline_from_dict(tree: dict, source: str = "<config>") -> Pipeline:
    try:
        return Pipeline.model_validate(tree)
    except ValidationError as exc:
        raise KitError(_describe(exc, source)) from None


def dump_pipeline(pipeline: Pipeline) -> str:
    return yaml.safe_dump(pipeline.model_dump(mode="json"), sort_keys=False)
