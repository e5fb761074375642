"""Honest scores for a blend: weights fitted on the other folds, scored on the held-out one.

The MSE comes from residual Grams (``fold_point_grams``); the NME, which is not quadratic in the weights, from
one more streaming pass that forms each row's held-out prediction (``face_nme``, ``by_fold``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from kit.blend.weights import Fit, Method, blend_sse, fit
from kit.metrics import nme_per_face

# An ensemble's predictions (n, Q) of rows from the runs' coordinates (n, Q, R) (Q = 2P, point-major) and the
# rows' folds (n,).
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]

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
    fold_weights: tuple[np.ndarray, ...] = ()  # fold_weights[f]: fitted without fold f, scored on it


def nested_cv(method: Method | str, grams: np.ndarray, fold_rows: np.ndarray) -> NestedScore:
    """Score ``method`` by nested cross-validation over the folds of ``grams`` (F, P, R, R).

    Args:
        fold_rows: (F,) number of rows in each fold.
    """
    n_folds, n_points = grams.shape[:2]
    point_sse = np.zeros((n_folds, n_points))
    fold_weights = []
    for f in range(n_folds):
        others = np.delete(np.arange(n_folds), f)
        fold_weights.append(fit(method, grams[others]).weights)
        point_sse[f] = blend_sse(fold_weights[f], grams[f])
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
        fold_weights=tuple(fold_weights),
    )


def run_point_mse(grams: np.ndarray, fold_rows: np.ndarray) -> np.ndarray:
    """Each run's OOF MSE per point (R, P), from the diagonals of the Grams."""
    diag = np.diagonal(grams.sum(axis=0), axis1=-2, axis2=-1)  # P, R
    return diag.T / (fold_rows.sum() * 2)


def blend_coordinates(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The blend (n, Q) of the runs' coordinates (n, Q, R) with weights (R,) or per point (P, R)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        return x @ w
    return np.einsum("nqr,qr->nq", x, np.repeat(w, 2, axis=0))


def by_fold(models: Sequence[Callable[[np.ndarray], np.ndarray]]) -> Predictor:
    """Each row predicted by the model of its fold, ``models[f]`` fitted without fold ``f``: nested-CV predictions."""

    def predict(x: np.ndarray, fold: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[:2])
        for f in np.unique(fold):
            mask = fold == f
            out[mask] = models[f](x[mask])
        return out

    return predict


def everywhere(model: Callable[[np.ndarray], np.ndarray]) -> Predictor:
    """Every row predicted by one model (fitted on all folds: in-sample predictions)."""
    return lambda x, fold: model(x)


def nested_blend(score: NestedScore) -> Predictor:
    """The blend's nested-CV predictions: each fold blended with the weights fitted without it."""
    return by_fold([partial(blend_coordinates, weights=w) for w in score.fold_weights])


def in_sample_blend(score: NestedScore) -> Predictor:
    """The blend's in-sample predictions: every row blended with the weights fitted on all folds."""
    return everywhere(partial(blend_coordinates, weights=score.fit.weights))


def face_nme(
    predictions: Sequence[np.ndarray],
    truth: np.ndarray,
    folds: np.ndarray,
    sizes: np.ndarray,
    ensembles: dict[str, Predictor],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-face NME (percent) of each run (R, N) and of each ensemble (N,), in one streaming pass over the rows.

    Args:
        predictions: R arrays (N, P, 2), e.g. memory-mapped OOF predictions.
        truth: (N, P, 2) answers; folds: (N,) fold of each row; sizes: (N,) face sizes (``kit.metrics.face_sizes``).
        ensembles: name -> predictor of rows from the runs' coordinates and the rows' folds.
    """
    n, p, _ = truth.shape
    r = len(predictions)
    runs = np.empty((r, n))
    out = {name: np.empty(n) for name in ensembles}
    chunk = max(1, CHUNK_BYTES // (8 * 2 * p * (2 * r + 4)))
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        x = np.stack([np.asarray(pred[rows], dtype=np.float64).reshape(-1, 2 * p) for pred in predictions], -1)
        y, s = np.asarray(truth[rows], dtype=np.float64), sizes[rows]
        for i in range(r):
            runs[i, rows] = nme_per_face(x[..., i].reshape(-1, p, 2), y, sizes=s)
        for name, predict in ensembles.items():
            out[name][rows] = nme_per_face(predict(x, folds[rows]).reshape(-1, p, 2), y, sizes=s)
    return runs, out
