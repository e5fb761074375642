"""Files derived from the data and stored in its workspace: the fold split and the left/right flip permutation."""

from __future__ import annotations

import numpy as np

from kit.config import Pipeline
from kit.data.competition import FLIP_FILE, FOLDS_FILE, Competition
from kit.data.flip import derive_flip_permutation, save_permutation
from kit.data.folds import load_folds, make_folds, write_folds
from kit.errors import DataError, KitError

DEFAULT_K, DEFAULT_SEED = 5, 42  # the split fold-train makes when kit folds was not run


def flips_needed(pipeline: Pipeline | None) -> bool:
    return pipeline is not None and (pipeline.augment.hflip > 0 or pipeline.tta.hflip)


def flip_permutation(comp: Competition, pipeline: Pipeline | None = None) -> np.ndarray | None:
    """The data's left/right permutation, stored or derived in memory (nothing is written).

    A layout that is not mirror-symmetric has none: that is fine unless the pipeline flips (augmentation or TTA).

    Raises:
        KitError: the pipeline flips and the layout has no permutation, or the stored one has the wrong length.
    """
    perm = comp.flip_permutation()
    if perm is None:
        try:
            perm = derive_flip_permutation(np.asarray(comp.train.points))
        except DataError as exc:
            if flips_needed(pipeline):
                raise KitError(f"{exc}; set augment.hflip=0 and tta.hflip=false to train without flips") from None
            return None
    if len(perm) != comp.n_points:
        raise KitError(f"{comp.flip_file}: {len(perm)} entries for {comp.n_points} points (rerun kit check)")
    return perm


def ensure_flip_permutation(comp: Competition, pipeline: Pipeline | None = None) -> np.ndarray | None:
    """``flip_permutation``, stored in the workspace when it was derived."""
    perm = flip_permutation(comp, pipeline)
    if perm is not None and not comp.flip_file.is_file():
        save_permutation(comp.workspace / FLIP_FILE, perm)
    return perm


def fold_count(comp: Competition) -> int:
    """k of the data's ``folds.csv`` (validated), or the default k when there is none yet.

    Raises:
        DataError: a malformed folds.csv, or fewer images than the default k.
    """
    if comp.folds_csv.is_file():
        return int(load_folds(comp.folds_csv, comp.train.file_names).max()) + 1
    if len(comp.train) < DEFAULT_K:
        raise DataError(f"{comp.train_csv}: {len(comp.train)} images, fewer than {DEFAULT_K} folds (run kit folds --k)")
    return DEFAULT_K


def ensure_folds(comp: Competition) -> np.ndarray:
    """The fold of each training row, from ``folds.csv`` (made with the defaults when absent)."""
    if not comp.folds_csv.is_file():
        write_folds(comp.workspace / FOLDS_FILE, make_folds(comp.train.file_names, k=DEFAULT_K, seed=DEFAULT_SEED))
    return load_folds(comp.folds_csv, comp.train.file_names)
