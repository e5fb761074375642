"""Honest scores for a blend: weights fitted on the other folds, scored on the held-out one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.blend.weights import Fit, Method, blend_sse, fit

CHUNK_BYTES = 1 << 26  # rows of residuals processed at once (float64 over all runs)


def fold_point_grams(
    predictions: Sequence[np.ndarray], truth: np.ndarray, folds: np.ndarray, n_folds: int
) -> np.ndarray:
    """Residual Gram matrices per fold and point, (F, P, R, R), streaming over rows.

    Args:
        predictions: R arrays (N, P, 2), e.g. memory-mapped OOF predictions.
        truth: (N, P, 2) answers.
        folds: (N,) fold of each row in ``[0, n_folds)``.
    """
    n, p, _ = truth.shape
    r = len(predictions)
    grams = np.zeros((n_folds, p, r, r))
    chunk = max(1, CHUNK_BYTES // (r * p * 2 * 8))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        y = np.asarray(truth[start:stop], dtype=np.float64)
        resid = np.stack([np.asarray(pred[start:stop], dtype=np.float64) - y for pred in predictions])  # R,n,P,2
        fold = folds[start:stop]
        for f in np.unique(fold):
            e = resid[:, fold == f].transpose(2, 0, 1, 3).reshape(p, r, -1)  # P, R, rows*2
            grams[f] += e @ e.transpose(0, 2, 1)
    return grams


@dataclass(frozen=True)
class NestedScore:
    """A method's nested cross-validated error, and the fit on all folds."""

    mse: float  # pooled over all rows: the number to compare with a run's OOF MSE
    fold_mse: np.ndarray  # (F,) each held-out fold's MSE
    point_mse: np.ndarray  # (P,) each point's held-out MSE
    in_sample_mse: float  # the all-folds fit scored on the rows it was fitted on (optimistic)
    fit: Fit  # fitted on all folds: the weights to apply to test predictions


def nested_cv(method: Method | str, grams: np.ndarray, fold_rows: np.ndarray) -> NestedScore:
    """Score ``method`` by nested cross-validation over the folds of ``grams`` (F, P, R, R).

    Args:
        fold_rows: (F,) number of rows in each fold.
    """
    n_folds, n_points = grams.shape[:2]
    point_sse = np.zeros((n_folds, n_points))
    for f in range(n_folds):
        others = np.delete(np.arange(n_folds), f)
        point_sse[f] = blend_sse(fit(method, grams[others]).weights, grams[f])
    full = fit(method, grams)
    values_per_row = n_points * 2
    total_rows = fold_rows.sum()
    in_sample = blend_sse(full.weights, grams.sum(axis=0)).sum() / (total_rows * values_per_row)
    return NestedScore(
        mse=float(point_sse.sum() / (total_rows * values_per_row)),
        fold_mse=point_sse.sum(axis=1) / (fold_rows * values_per_row),
        point_mse=point_sse.sum(axis=0) / (total_rows * 2),
        in_sample_mse=float(in_sample),
        fit=full,
    )


def run_point_mse(grams: np.ndarray, fold_rows: np.ndarray) -> np.ndarray:
    """Each run's OOF MSE per point (R, P), from the diagonals of the Grams."""
    diag = np.diagonal(grams.sum(axis=0), axis1=-2, axis2=-1)  # P, R
    return diag.T / (fold_rows.sum() * 2)
