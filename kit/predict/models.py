"""A trained fold's model, rebuilt from its run's pipeline and loaded from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from kit.checkpoint import BestCheckpoint
from kit.config import Pipeline, PretrainedConfig
from kit.errors import KitError


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_fold_model(pipeline: Pipeline, checkpoint: Path, n_points: int, device: torch.device):
    """The model of ``pipeline`` with the weights of ``checkpoint``, on ``device``, in eval mode.

    Raises:
        KitError: the checkpoint is unreadable or does not fit the pipeline's model.
    """
    from kit.models import create_model

    # The checkpoint holds every weight: build without the pretrained source (which may be absent here).
    bare = pipeline.model_copy(update={"model": pipeline.model.model_copy(update={"pretrained": PretrainedConfig()})})
    model = create_model(bare, n_points)
    weights = BestCheckpoint.load(checkpoint).model
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise KitError(f"{checkpoint}: does not fit the run's pipeline ({type(exc).__name__})") from None
    model.to(device)
    if pipeline.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model.eval()
