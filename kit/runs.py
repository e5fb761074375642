"""The contract of a finished run folder, shared by fold-train, predict and blend.

``runs/NAME/`` holds ``oof.npy`` (N_train, P, 2) and ``test.npy`` (N_test, P, 2), float32 in original-image
pixels in the row order of ``landmarks.csv`` / ``test_points.csv``, and ``metrics.json`` with at least
``oof_mse`` and a ``split`` block identifying the data and the fold split the run was trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import KitError


def names_sha256(file_names: np.ndarray) -> str:
    """Content hash of an ordered list of file names (identifies the rows of a table)."""
    return hashlib.sha256("\n".join(map(str, file_names)).encode()).hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    """What a run's predictions are aligned with; runs can be blended only when these are equal."""

    folds_sha256: str
    train_names_sha256: str
    test_names_sha256: str
    n_points: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Run:
    """A finished run: its predictions and metrics."""

    path: Path
    name: str
    oof: np.ndarray  # (N_train, P, 2)
    test: np.ndarray  # (N_test, P, 2)
    metrics: dict
    split: SplitInfo

    @property
    def oof_mse(self) -> float:
        return float(self.metrics["oof_mse"])


def load_run(path: str | Path) -> Run:
    """Load a finished run folder.

    Raises:
        KitError: a file is missing or the shapes disagree with ``metrics.json``.
    """
    path = Path(path)
    for name in ("oof.npy", "test.npy", "metrics.json"):
        if not (path / name).is_file():
            raise KitError(f"{path / name}: missing (is the run finished?)")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        split = SplitInfo(**metrics["split"])
        float(metrics["oof_mse"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KitError(f"{path / 'metrics.json'}: invalid run metrics ({type(exc).__name__}: {exc})") from None
    # Memory-mapped: a full-size OOF array is about 3 GB per run; blending reads it in chunks.
    oof, test = np.load(path / "oof.npy", mmap_mode="r"), np.load(path / "test.npy", mmap_mode="r")
    for name, array in (("oof.npy", oof), ("test.npy", test)):
        if array.ndim != 3 or array.shape[1:] != (split.n_points, 2):
            raise KitError(f"{path / name}: shape {array.shape}, expected (rows, {split.n_points}, 2)")
    return Run(path=path, name=path.name, oof=oof, test=test, metrics=metrics, split=split)
