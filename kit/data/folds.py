"""One shared k-fold split per competition: every model's OOF predictions come from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.io import atomic_path, file_sha256


def make_folds(file_names: np.ndarray, k: int = 5, seed: int = 42, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Assign each image a fold in ``[0, k)``; images sharing a group share a fold.

    The split depends only on the set of (file name, group) pairs and the seed, not on the row order.

    Raises:
        DataError: fewer images (or groups) than folds.
    """
    from sklearn.model_selection import GroupKFold, KFold  # scikit-learn takes ~1 s to import; only splits need it

    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    file_names = np.asarray(file_names, dtype=str)
    if len(file_names) < k:
        raise DataError(f"cannot split {len(file_names)} images into {k} folds")
    order = np.argsort(file_names, kind="stable")
    fold = np.empty(len(file_names), dtype=np.int64)
    if groups is None:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(order)
    else:
        groups = np.asarray(groups)[order]
        if len(np.unique(groups)) < k:
            raise DataError(f"cannot split {len(np.unique(groups))} groups into {k} folds")
        splits = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(order, groups=groups)
    for index, (_, valid) in enumerate(splits):
        fold[order[valid]] = index
    return pd.DataFrame({"file_name": file_names, "fold": fold})


def read_groups(path: Path, file_names: np.ndarray) -> np.ndarray:
    """Group labels from a ``file_name,group`` table (comma- or TAB-separated), aligned with ``file_names``.

    Raises:
        DataError: bad header, a missing or conflicting group, or an image without a group.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    sep = "\t" if "\t" in first else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, index_col=False, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable table ({str(exc).strip().splitlines()[-1]})") from None
    if list(table.columns) != ["file_name", "group"]:
        raise DataError(f"{path}: line 1: header must be 'file_name{sep}group', found {list(table.columns)}")
    empty = np.flatnonzero((table["group"].str.strip() == "").to_numpy())
    if len(empty):
        raise DataError(f"{path}: line {int(empty[0]) + 2}: empty group")
    lookup: dict[str, str] = {}
    for line_no, (name, group) in enumerate(zip(table["file_name"], table["group"], strict=True), start=2):
        if lookup.setdefault(name, group) != group:
            raise DataError(f"{path}: line {line_no}: '{name}' is given two groups ('{lookup[name]}', '{group}')")
    missing = [name for name in file_names if name not in lookup]
    if missing:
        raise DataError(f"{path}: no group for '{missing[0]}' ({len(missing)} images without a group)")
    return np.array([lookup[name] for name in file_names])


def write_folds(path: Path, folds: pd.DataFrame) -> str:
    """Write ``folds.csv`` atomically and return its content hash."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)
    return file_sha256(path)


def load_folds(path: Path, file_names: np.ndarray) -> np.ndarray:
    """Fold of each training image, in ``file_names`` order.

    Raises:
        DataError: the file is malformed or does not cover exactly the training images.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run 'kit folds')")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[-1]})") from None
    if list(table.columns) != ["file_name", "fold"]:
        raise DataError(f"{path}: line 1: header must be 'file_name,fold'")
    if len(table) != len(file_names) or not np.array_equal(table["file_name"].to_numpy(dtype=str), file_names):
        raise DataError(f"{path}: rows do not match train/landmarks.csv (rerun 'kit folds')")
    text = table["fold"].to_numpy(dtype=str)
    bad = np.flatnonzero(~np.char.isdigit(text))
    if len(bad):
        raise DataError(f"{path}: line {int(bad[0]) + 2}, column 'fold': not a fold number: {text[bad[0]]!r}")
    fold = text.astype(np.int64)
    present = np.unique(fold)
    if not np.array_equal(present, np.arange(len(present))) or len(present) < 2:
        raise DataError(f"{path}: folds must be numbered 0..k-1 with k >= 2, found {present.tolist()[:10]}")
    return fold
