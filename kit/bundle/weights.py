"""Fold models as ``.safetensors`` weights: written from a run's checkpoints, read back into the model factory.

A bundle holds only the weights inference needs (no optimiser state, no pickled Python), optionally in half
precision; the model is rebuilt from the run's pipeline by ``kit.models.create_model``, as ``kit infer`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kit.config import Pipeline, PretrainedConfig
from kit.errors import KitError
from kit.io import atomic_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def save_weights(path: Path, state: Mapping[str, torch.Tensor], dtype: str = "float32") -> None:
    """Write a model state dict as safetensors, floating tensors cast to ``dtype``, atomically.

    Raises:
        KitError: a weight does not fit float16 (use bfloat16).
    """
    target = DTYPES[dtype]
    tensors = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            if target is torch.float16 and tensor.numel() and float(tensor.abs().max()) > _FLOAT16_MAX:
                raise KitError(f"{path}: weight '{key}' exceeds the float16 range; store bfloat16 instead")
            tensor = tensor.to(target)
        tensors[key] = tensor.contiguous().clone()  # no shared storage: safetensors refuses it
    with atomic_path(path, needed=sum(t.numel() * t.element_size() for t in tensors.values())) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A fold's weights as stored.

    Raises:
        KitError: the file is missing or not safetensors.
    """
    if not path.is_file():
        raise KitError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise KitError(f"{path}: not readable safetensors ({type(exc).__name__})") from None


def build_model(
    pipeline: Pipeline, state: Mapping[str, torch.Tensor], n_points: int, device: torch.device, source: str
) -> torch.nn.Module:
    """The pipeline's model with ``state`` loaded (cast to the model's precision), on ``device``, in eval mode.

    Built without its pretrained source (the weights hold every tensor), as ``kit.predict.models.load_fold_model``.

    Raises:
        KitError: the weights do not fit the pipeline's model, naming ``source``.
    """
    from kit.models import create_model

    bare = pipeline.model_copy(update={"model": pipeline.model.model_copy(update={"pretrained": PretrainedConfig()})})
    model = create_model(bare, n_points)
    try:
        model.load_state_dict(dict(state))  # copies into the float32 parameters: half weights are upcast
    except (RuntimeError, KeyError) as exc:
        raise KitError(f"{source}: does not fit the run's pipeline ({type(exc).__name__})") from None
    model.to(device)
    if pipeline.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model.eval()
