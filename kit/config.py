"""Typed pipeline configs: YAML files in ``pipelines/``, validated at load, overridable from the command line.

An unknown key or a wrong type is an error that names the key and the file. The ``model`` section is validated as
the section of its family, which the model families register here (``register_family_config``) when ``kit.models``
is imported: this module never imports them, so import ``kit.models`` before validating a pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from kit.errors import KitError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


ConfigSection = _Strict  # base of the sections that model families define in their own modules


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


DEFAULT_FAMILY = "regression"  # the model family of a pipeline that names none


class ModelConfig(_Strict):
    """Base of the ``model`` section: each model family in ``kit.models`` derives its own, with its own fields.

    The pipeline's ``model`` is validated as the class registered for its ``family`` (``register_family_config``).
    """

    family: str = DEFAULT_FAMILY  # a registered model family (list_families())
    backbone: str = "resnet34"  # timm model name, or smp encoder name (e.g. tu-resnet34) for encoder-decoders
    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)

    @property
    def decoder(self) -> str | None:
        """How raw outputs become points, for families with a choice of decoders; None otherwise."""
        return None

    def with_decoder(self, name: str) -> ModelConfig:
        """A copy of this section with the output decoder ``name``.

        Raises:
            KitError: the family has no decoder option, or ``name`` is not one of its decoders.
        """
        raise KitError(f"--decoder: model family '{self.family}' has no decoder option")


def _unknown_family(family: Any, choices: list[str]) -> ValidationError:
    """An error at ``family`` that pydantic nests under the ``model`` key like its own errors."""
    error = PydanticCustomError(
        "unknown_family",
        "unknown model family '{family}' (choose from {choices})",
        {"family": str(family), "choices": ", ".join(choices)},
    )
    return ValidationError.from_exception_data(
        "ModelConfig", [InitErrorDetails(type=error, loc=("family",), input=family)]
    )


_FAMILY_CONFIGS: dict[str, type[ModelConfig]] = {}  # family -> its ``model`` section, filled by kit.models


def register_family_config(config: type[ModelConfig]) -> type[ModelConfig]:
    """Validate ``model`` sections whose ``family`` is ``config``'s default as ``config``.

    The model families call it (through ``kit.models.register_family``) when ``kit.models`` is imported: this module
    never imports them.
    """
    family = config.model_fields["family"].default
    if not issubclass(config, ModelConfig) or not isinstance(family, str):
        raise TypeError(f"{config.__name__}: a family's section must be a ModelConfig with a default family")
    _FAMILY_CONFIGS[family] = config
    return config


def list_families() -> list[str]:
    """The registered model families."""
    return sorted(_FAMILY_CONFIGS)


def family_config(name: str) -> type[ModelConfig] | None:
    """The config class of a registered family, or None."""
    return _FAMILY_CONFIGS.get(name)


def _family_section(value: Any, handler: ValidatorFunctionWrapHandler) -> ModelConfig:
    """Validate a ``model`` section as the config class of its family (a registered family's instance passes)."""
    if not _FAMILY_CONFIGS:
        # A programming error, not a user's: it must not pass as an invalid pipeline.
        raise RuntimeError("no model family is registered: import kit.models before validating a pipeline")
    if isinstance(value, ModelConfig):
        if isinstance(value, family_config(value.family) or ()):
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        return handler(value)  # the base's "valid dictionary" error
    family = value.get("family", DEFAULT_FAMILY)
    config = family_config(family) if isinstance(family, str) else None
    if config is None:
        raise _unknown_family(family, list_families())
    return config.model_validate(value)


class InputConfig(_Strict):
    size: int = Field(128, ge=16)  # model input, pixels (square)
    margin: float = Field(0.0, ge=-0.4, le=1.0)  # crop side = shorter image side x (1 + 2 x margin)
    pad: int = Field(16, ge=0)  # extra border kept in the crop cache so augmentation does not cut points


class AugmentConfig(_Strict):
    hflip: float = Field(0.5, ge=0, le=1)  # probability; flips also swap left/right point identities
    scale: float = Field(0.1, ge=0, le=0.9)  # random zoom within 1 +- scale (the same for x and y)
    rotate: float = Field(15.0, ge=0, le=180)  # degrees, about the crop centre
    shift: float = Field(0.05, ge=0, le=0.5)  # fraction of the input size, x and y apart, in whole pixels
    color: float = Field(0.5, ge=0, le=1)  # probability of brightness/contrast/saturation/hue jitter
    blur: float = Field(0.1, ge=0, le=1)  # probability of a Gaussian (3-5 px) or else a motion (3-7 px) blur
    noise: float = Field(0.1, ge=0, le=1)  # probability of per-pixel Gaussian noise
    cutout: float = Field(0.2, ge=0, le=1)  # probability of holes filled with uniform noise
    gpu: bool = False  # geometry + flip on the device from the uint8 crop cache (fast path for CUDA)
    brightness: float = Field(0.3, ge=0, le=1)  # colour jitter: intensities x U(1 - brightness, 1 + brightness)
    contrast: float = Field(0.3, ge=0, le=1)  # colour jitter: distance from the mean grey x U(1 -+ contrast)
    saturation: float = Field(0.3, ge=0, le=1)  # colour jitter: chroma x U(1 -+ saturation)
    hue: float = Field(0.05, ge=0, le=0.5)  # colour jitter: chroma turned about the grey by U(-hue, hue) turns
    noise_std: tuple[float, float] = (0.02, 0.08)  # noise sigma range, fraction of full scale
    cutout_holes: tuple[int, int] = (1, 3)  # number of holes, inclusive range
    cutout_size: tuple[float, float] = (0.1, 0.3)  # hole height and width (drawn apart), fractions of the side

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for key, (low, high), floor, ceiling in [
            ("noise_std", self.noise_std, 0, 1),
            ("cutout_holes", self.cutout_holes, 0, 16),
            ("cutout_size", self.cutout_size, 0, 1),
        ]:
            if not floor <= low <= high <= ceiling:
                raise ValueError(f"{key} must be a range [low, high] with {floor} <= low <= high <= {ceiling}")
        return self


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
    log_every: int = Field(10, ge=1)  # steps between reads of the loss (progress and the non-finite check)
    report_images: int = Field(12, ge=0)


class TTAConfig(_Strict):
    hflip: bool = False  # average with the mirrored prediction (mapped back through the flip permutation)


class PseudoConfig(_Strict):
    source: Path  # a finished run folder or a blend's .json whose fold-k test predictions label fold k's extra images
    weight: float = Field(1.0, gt=0, le=1)  # fraction of the pseudo-labelled test images drawn into each epoch
    max_spread: float | None = Field(None, gt=0)  # px: drop test images whose source runs disagree more (RMS)
    source_sha256: str | None = None  # filled by kit: the source runs' identities and weights


class TrackingConfig(_Strict):
    """Where the run is logged besides its folder (``kit.tracking``); not part of the run's identity."""

    backend: Literal["mlflow"] = "mlflow"
    uri: str | None = None  # sqlite:///..., http://host:port; default: sqlite:///RUNS/mlflow.db
    experiment: str | None = None  # default: $KIT_TRACKING_EXPERIMENT, else "kit"


class Pipeline(_Strict):
    name: str
    # validated as the config class of model.family; serialised with that class's fields
    model: Annotated[SerializeAsAny[ModelConfig], WrapValidator(_family_section)] = Field(
        default_factory=dict, validate_default=True
    )
    input: InputConfig = Field(default_factory=InputConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tta: TTAConfig = Field(default_factory=TTAConfig)
    pseudo: PseudoConfig | None = None  # train on the test images too, labelled by the source's fold-k models
    tracking: TrackingConfig | None = None  # log the run to MLflow (as --track mlflow); None: only with --track


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
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise KitError(
                f"--set {dotted.strip()}: value {raw!r} is not valid YAML ({str(exc).splitlines()[0]})"
            ) from None
        _set_dotted(tree, dotted.strip(), value)
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
