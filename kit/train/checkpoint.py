"""Atomic checkpoints: a kill -9 at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import torch

from kit.io import atomic_path


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
