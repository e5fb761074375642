"""One shared k-fold split per competition: every model's OOF predictions come from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold

from kit.errors import DataError
from kit.io import atomic_path, file_sha256


def make_folds(file_names: np.ndarray, k: int = 5, seed: int = 42, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Assign each image a fold in ``[0, k)``; images sharing a group share a fold."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if len(file_names) < k:
        raise DataError(f"cannot split {len(file_names)} images into {k} folds")
    fold = np.empty(len(file_names), dtype=np.int64)
    if groups is None:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(file_names)
    else:
        splits = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(file_names, groups=groups)
    for index, (_, valid) in enumerate(splits):
        fold[valid] = index
    return pd.DataFrame({"file_name": file_names, "fold": fold})


def read_groups(path: Path, file_names: np.ndarray) -> np.ndarray:
    """Group labels (``file_name``, ``group`` CSV) aligned with ``file_names``."""
    table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    if list(table.columns[:2]) != ["file_name", "group"]:
        raise DataError(f"{path}: header must be 'file_name,group'")
    lookup = dict(zip(table["file_name"], table["group"], strict=True))
    missing = [name for name in file_names if name not in lookup]
    if missing:
        raise DataError(f"{path}: no group for '{missing[0]}'")
    return np.array([lookup[name] for name in file_names])


def write_folds(path: Path, folds: pd.DataFrame) -> str:
    """Write ``folds.csv`` atomically and return its content hash."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)
    return file_sha256(path)


def load_folds(path: Path, file_names: np.ndarray) -> np.ndarray:
    """Fold of each training image, in ``file_names`` order.

    Raises:
        DataError: the file does not cover exactly the training images.
    """
    if not path.is_file():
        raise DataError(f"{path}: not found (run 'kit folds')")
    table = pd.read_csv(path, dtype={"file_name": str})
    if list(table.columns) != ["file_name", "fold"]:
        raise DataError(f"{path}: header must be 'file_name,fold'")
    if len(table) != len(file_names) or not np.array_equal(table["file_name"].to_numpy(dtype=str), file_names):
        raise DataError(f"{path}: rows do not match train/landmarks.csv (rerun 'kit folds')")
    return table["fold"].to_numpy(dtype=np.int64)
