"""Atomic checkpoints: a kill -9 at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import torch

from kit.errors import KitError
from kit.io import atomic_path


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's state dict.

    Raises:
        KitError: the file is truncated or not a checkpoint, naming it.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise KitError(f"{path}: missing") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise KitError(f"{path}: not a readable checkpoint ({type(exc).__name__}); delete it and rerun") from None
    if not isinstance(state, dict):
        raise KitError(f"{path}: not a kit checkpoint")
    return state


def read_identity(path: Path):
    """The ``Identity`` a checkpoint was written under, or None (unreadable, or written by an older kit)."""
    from kit.runs import Identity

    try:
        data = load_checkpoint(path).get("identity")
        return Identity.model_validate(data) if data is not None else None
    except (KitError, ValueError):
        return None
