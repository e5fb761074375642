"""Honest scores for a blend: weights fitted on the other folds, scored on the held-out one.

The MSE comes from residual Grams (``fold_point_grams``); the NME, which is not quadratic in the weights, from
one more streaming pass that forms each row's held-out prediction (``face_nme``, ``by_fold``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from kit.ensemble.rows import add_products, fold_chunks, symmetric
from kit.ensemble.weights import Fit, Method, blend_sse, fit
from kit.io import rows_in
from kit.metrics import nme_per_face

# An ensemble's predictions (n, Q) of rows of one fold from the runs' coordinates (R, n, Q) (Q = 2P, point-major)
# and that fold.
Predictor = Callable[[np.ndarray, int], np.ndarray]

CHUNK_BYTES = 1 << 28  # one chunk of rows (every run's coordinates and the truth), counted at 8 bytes a value
PREDICT_ROWS = 64  # rows predicted at once by ``face_nme``


def point_grams(products: np.ndarray) -> np.ndarray:
    """Per-point Grams (..., P, R, R) from per-coordinate residual products (..., R, R, Q) (``add_products``)."""
    full = symmetric(products)
    *lead, r, _, q = full.shape
    return full.reshape(*lead, r, r, q // 2, 2).sum(axis=-1).transpose(*range(len(lead)), -1, -3, -2).copy()


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
    products = np.zeros((n_folds, r, r, 2 * p))
    for chunk in fold_chunks(
        predictions, truth, folds, rows_in(8 * 2 * p * (r + 1), CHUNK_BYTES), "OOF rows: blend statistics"
    ):
        for f, rows in chunk.groups:
            for _, x, y in chunk.blocks(rows):
                add_products(products[f], x - y)
    return point_grams(products)


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
    """The blend (n, Q) of the runs' coordinates (R, n, Q) with weights (R,) or per point (P, R)."""
    w = np.asarray(weights, dtype=np.float64)
    coef = w[:, None] if w.ndim == 1 else np.ascontiguousarray(np.repeat(w, 2, axis=0).T)  # R, 1 or R, Q
    out = x[0] * coef[0]
    for r in range(1, len(x)):
        out += x[r] * coef[r]
    return out


def by_fold(models: Sequence[Callable[[np.ndarray], np.ndarray]]) -> Predictor:
    """Each row predicted by the model of its fold, ``models[f]`` fitted without fold ``f``: nested-CV predictions."""
    return lambda x, fold: models[fold](x)


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
        ensembles: name -> predictor of one fold's rows from the runs' coordinates.
    """
    n, p, _ = truth.shape
    r = len(predictions)
    runs = np.empty((r, n))
    out = {name: np.empty(n) for name in ensembles}
    for chunk in fold_chunks(predictions, truth, folds, rows_in(8 * 2 * p * (r + 4), CHUNK_BYTES), "OOF rows: NME"):
        for f, rows in chunk.groups:
            for block, x, y in chunk.blocks(rows, PREDICT_ROWS):
                where = chunk.rows[block]
                y, s = y.reshape(-1, p, 2), sizes[where]
                for i in range(r):
                    runs[i, where] = nme_per_face(x[i].reshape(-1, p, 2), y, sizes=s)
                for name, predict in ensembles.items():
                    out[name][where] = nme_per_face(predict(x, f).reshape(-1, p, 2), y, sizes=s)
    return runs, out
