"""Honest scores for a stacker: for each held-out fold, everything (inner-CV choices, the PCA basis, stage 1 and
stage 2) is fitted on the other folds' statistics only, then scored on the held-out fold's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from kit.ensemble.ridge import PointRidge, fit_point_ridge, point_sse
from kit.ensemble.shape import PcaRidge, component_grid, correction_sse, fit_basis, fit_correction, shape_stats
from kit.ensemble.stats import FoldStats


class Model(str, Enum):
    """The second-level model."""

    ridge = "ridge"  # per point and coordinate: intercept + ridge weights per run, shrunk toward the runs' mean
    pca_ridge = "pca-ridge"  # ridge, then a ridge correction of shared errors in a PCA basis of whole faces


def training_folds(held_out: int, folds: Sequence[int]) -> tuple[int, ...]:
    """The folds a model scored on ``held_out`` may be fitted on."""
    return tuple(f for f in folds if f != held_out)


@dataclass(frozen=True)
class StackScore:
    """A stacker's nested cross-validated error, and the fits."""

    mse: float  # pooled over all rows: the number to compare with a run's OOF MSE and a blend's nested-CV MSE
    fold_mse: np.ndarray  # (F,)
    point_mse: np.ndarray  # (P,) each point's held-out MSE
    in_sample_mse: float  # the all-folds fit scored on the rows it was fitted on (optimistic)
    model: PointRidge | PcaRidge  # fitted on all folds: applied to the test predictions
    fold_models: list  # fold_models[k]: the model scored on fold k (fitted without it)


def _score(point_sse_per_fold: np.ndarray, rows: np.ndarray, in_sample_sse: float, model, fold_models) -> StackScore:
    """From each held-out fold's squared error per point (F, P)."""
    n_points = point_sse_per_fold.shape[1]
    return StackScore(
        mse=float(point_sse_per_fold.sum() / (rows.sum() * n_points * 2)),
        fold_mse=point_sse_per_fold.sum(axis=1) / (rows * n_points * 2),
        point_mse=point_sse_per_fold.sum(axis=0) / (rows.sum() * 2),
        in_sample_mse=float(in_sample_sse / (rows.sum() * n_points * 2)),
        model=model,
        fold_models=fold_models,
    )


def _per_point(coord_sse: np.ndarray) -> np.ndarray:
    return coord_sse.reshape(-1, 2).sum(axis=1)


def nested_ridge(stats: FoldStats) -> StackScore:
    """Nested CV of the ``ridge`` stacker over the folds of ``stats``."""
    fold_models, sse = [], []
    for i, k in enumerate(stats.folds):
        model = fit_point_ridge(stats.restrict(training_folds(k, stats.folds)))
        fold_models.append(model)
        sse.append(_per_point(point_sse(model, stats.point[i], stats.ref)))
    full = fit_point_ridge(stats)
    in_sample = point_sse(full, stats.point.sum(axis=0), stats.ref).sum()
    return _score(np.array(sse), stats.rows, in_sample, full, fold_models)


def nested_pca_ridge(
    stats: FoldStats, predictions: Sequence[np.ndarray], truth: np.ndarray, folds: np.ndarray
) -> StackScore:
    """Nested CV of the ``pca-ridge`` stacker; ``stats`` must hold ``resid`` (``accumulate(..., shape=True)``).

    Stage 1 and the basis are fitted on each outer training set (and on all folds, for the test predictions), then
    one more pass over the rows gives the stage-2 moments of every fold for each of them. Stage 2's inner CV runs
    over the outer training folds on stage-1 residuals of a stage 1 fitted on all of them: its choice of K and
    strength is slightly optimistic, the outer score is not (nothing of the held-out fold is fitted on).
    """
    if stats.resid is None or stats.folds != tuple(range(len(stats.folds))):
        raise ValueError("nested_pca_ridge needs accumulate(..., shape=True) statistics of folds 0..F-1")
    n_coords = stats.point.shape[1]
    k_max = max(component_grid(n_coords))
    subsets = [training_folds(k, stats.folds) for k in stats.folds] + [stats.folds]
    stage1 = [fit_point_ridge(stats.restrict(subset)) for subset in subsets]
    bases = [fit_basis(stats.restrict(subset), k_max) for subset in subsets]
    moments = shape_stats(predictions, truth, folds, len(stats.folds), list(zip(stage1, bases, strict=True)))
    fold_models, sse = [], []
    for i, k in enumerate(stats.folds):
        train = training_folds(k, stats.folds)
        correction = fit_correction(moments[i].restrict(train), bases[i])
        fold_models.append(PcaRidge(stage1[i], correction))
        sse.append(_per_point(correction_sse(correction, moments[i].restrict([k]))))
    full = PcaRidge(stage1[-1], fit_correction(moments[-1], bases[-1]))
    in_sample = correction_sse(full.correction, moments[-1]).sum()
    return _score(np.array(sse), stats.rows, in_sample, full, fold_models)
