"""Blend weights fitted on residual Gram matrices.

With residuals ``E_r = oof_r - truth`` and weights summing to 1, the blend's residual is ``sum_r w_r E_r``, so
its squared error is the quadratic form ``w^T G w`` with ``G_rs = <E_r, E_s>``. Every fit here works on these
R x R matrices (one per point, or per fold and point): fitting costs nothing next to reading the predictions,
and the predictions are never held twice in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Method(str, Enum):
    """How the runs are weighted."""

    mean = "mean"  # equal weights
    weights = "weights"  # one non-negative weight per run, summing to 1
    per_point = "per-point"  # one weight vector per point, shrunk toward the global weights
    hill_climb = "hill-climb"  # Caruana-style greedy selection with replacement


# Shrinkage strengths tried for per-point weights (in units of the average point's Gram); inf = global weights.
SHRINK_GRID = (0.0, 1 / 64, 1 / 16, 1 / 4, 1.0, 4.0, np.inf)
DEFAULT_SHRINK = 1.0


@dataclass(frozen=True)
class Fit:
    """Fitted weights: (R,) for one vector shared by all points, (P, R) for per-point weights."""

    weights: np.ndarray
    info: dict = field(default_factory=dict)  # method details for the report (counts, chosen shrinkage)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` (..., R) onto the probability simplex."""
    r = v.shape[-1]
    u = -np.sort(-v, axis=-1)
    css = np.cumsum(u, axis=-1) - 1.0
    ks = np.arange(1, r + 1)
    rho = np.count_nonzero(u - css / ks > 0, axis=-1)  # the condition holds on a prefix, so this is its length
    theta = np.take_along_axis(css, (rho - 1)[..., None], axis=-1) / rho[..., None]
    return np.maximum(v - theta, 0.0)


def simplex_qp(gram: np.ndarray, max_iter: int = 5000, tol: float = 1e-10) -> np.ndarray:
    """Minimise ``w^T G w`` over the simplex for each matrix of a batch (..., R, R) -> (..., R).

    Accelerated projected gradient (FISTA), batched over the leading axes. Each matrix is scaled by its mean
    diagonal first, which leaves the minimiser unchanged and makes one tolerance fit every scale.
    """
    gram = np.asarray(gram, dtype=np.float64)
    r = gram.shape[-1]
    scale = np.trace(gram, axis1=-2, axis2=-1)[..., None, None] / r
    gram = gram / np.where(scale > 0, scale, 1.0)
    gram = 0.5 * (gram + np.swapaxes(gram, -1, -2))
    lipschitz = 2.0 * np.linalg.eigvalsh(gram)[..., -1:]
    step = 1.0 / np.where(lipschitz > 0, lipschitz, 1.0)
    w = np.full(gram.shape[:-1], 1.0 / r)
    y, t = w.copy(), np.ones(gram.shape[:-2] + (1,))
    for it in range(max_iter):
        grad = 2.0 * np.einsum("...ij,...j->...i", gram, y)
        w_next = project_simplex(y - step * grad)
        # Adaptive restart (O'Donoghue & Candes): drop the momentum of an item when it points uphill.
        uphill = np.sum((y - w_next) * (w_next - w), axis=-1, keepdims=True) > 0
        t = np.where(uphill, 1.0, t)
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = w_next + ((t - 1.0) / t_next) * (w_next - w)
        done = it % 20 == 0 and np.max(np.abs(w_next - w), initial=0.0) < tol
        w, t = w_next, t_next
        if done:
            break
    return w


def blend_sse(weights: np.ndarray, point_grams: np.ndarray) -> np.ndarray:
    """Sum of squared errors of each point (P,) for weights (R,) or (P, R) and point Grams (P, R, R)."""
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), point_grams.shape[:-1])
    return np.einsum("pi,pij,pj->p", w, point_grams, w)


def fit_mean(gram: np.ndarray) -> Fit:
    """Equal weights."""
    r = gram.shape[-1]
    return Fit(np.full(r, 1.0 / r))


def fit_weights(gram: np.ndarray) -> Fit:
    """Non-negative weights summing to 1 that minimise the total squared error; ``gram`` is (R, R)."""
    return Fit(simplex_qp(gram))


def fit_per_point(point_grams: np.ndarray, shrink: float = DEFAULT_SHRINK) -> Fit:
    """One weight vector per point, shrunk toward the global weights.

    Point p minimises ``w^T (G_p + shrink * mean_q G_q) w``: ``shrink`` = 0 fits every point alone, and as it
    grows the weights tend to the global ones (which minimise ``w^T mean_q G_q w``).
    """
    if np.isinf(shrink):
        global_fit = fit_weights(point_grams.sum(axis=0))
        return Fit(np.tile(global_fit.weights, (point_grams.shape[0], 1)), {"shrink": "inf"})
    prior = point_grams.mean(axis=0)
    return Fit(simplex_qp(point_grams + shrink * prior), {"shrink": float(shrink)})


def fit_per_point_cv(fold_grams: np.ndarray, grid: tuple[float, ...] = SHRINK_GRID) -> Fit:
    """Per-point weights with the shrinkage chosen by leave-one-fold-out over the given folds (F, P, R, R).

    With a single fold there is nothing to validate on and ``DEFAULT_SHRINK`` is used.
    """
    total = fold_grams.sum(axis=0)
    if fold_grams.shape[0] < 2:
        return fit_per_point(total, DEFAULT_SHRINK)
    errors = np.zeros(len(grid))
    for f in range(fold_grams.shape[0]):
        rest = total - fold_grams[f]
        for i, shrink in enumerate(grid):
            errors[i] += blend_sse(fit_per_point(rest, shrink).weights, fold_grams[f]).sum()
    best = grid[int(np.argmin(errors))]
    fit = fit_per_point(total, best)
    return Fit(fit.weights, fit.info | {"cv_sse": {str(s): float(e) for s, e in zip(grid, errors, strict=True)}})


def fit_hill_climb(gram: np.ndarray, steps: int = 100) -> Fit:
    """Caruana-style greedy ensemble selection with replacement on the total Gram (R, R).

    Each step adds the run (possibly again) that lowers the blend's error most; the weights are the selection
    counts of the best prefix, normalised.
    """
    r = gram.shape[-1]
    counts = np.zeros(r, dtype=np.int64)
    best_counts, best_sse = counts, np.inf
    for step in range(1, steps + 1):
        candidates = (counts[None, :] + np.eye(r, dtype=np.int64)) / step
        sse = np.einsum("ci,ij,cj->c", candidates, gram, candidates)
        pick = int(np.argmin(sse))
        counts = counts + np.eye(r, dtype=np.int64)[pick]
        if sse[pick] < best_sse:
            best_counts, best_sse = counts, float(sse[pick])
    return Fit(best_counts / best_counts.sum(), {"counts": best_counts.tolist()})


def fit(method: Method | str, fold_grams: np.ndarray) -> Fit:
    """Fit ``method`` on per-fold, per-point Grams (F, P, R, R) of the folds it may look at."""
    method = Method(method)
    if method is Method.mean:
        return fit_mean(fold_grams)
    if method is Method.weights:
        return fit_weights(fold_grams.sum(axis=(0, 1)))
    if method is Method.per_point:
        return fit_per_point_cv(fold_grams)
    return fit_hill_climb(fold_grams.sum(axis=(0, 1)))
