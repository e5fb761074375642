"""Finished folds written straight into a run folder, importable from any test folder (as ``shapes``)."""

from __future__ import annotations

import numpy as np

from kit.runs import FoldSummary, Identity


def write_finished_folds(run, pipeline, split, fold_of: np.ndarray, oof: np.ndarray, tests, mse=None) -> None:
    """Write fold k of ``run`` as finished, its OOF rows ``oof[fold_of == k]`` and test predictions ``tests[k]``.

    Args:
        tests: one (M, P, 2) array per fold, or one array that every fold shares.
        mse: each fold's recorded MSE (default: the fold's OOF rows against nothing, 1.0).
    """
    k = int(fold_of.max()) + 1
    for fold in range(k):
        rows = fold_of == fold
        summary = FoldSummary(
            fold=fold,
            mse=1.0 if mse is None else float(mse(rows)),
            best_epoch=0,
            epochs=1,
            wall_seconds=1.0,
            images_per_second=1.0,
            identity=Identity.of(pipeline, split),
            n_train=int((~rows).sum()),
            n_valid=int(rows.sum()),
        )
        run.write_fold(fold, summary, oof[rows], tests if isinstance(tests, np.ndarray) else tests[fold])
