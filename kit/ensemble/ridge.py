"""The ``ridge`` stacker: per point and coordinate, a linear model of the runs with a ridge toward their mean.

For coordinate q (point p's x or y), with the runs' predictions ``x_r`` and their mean ``m``, the stacker predicts
``y = m + b + sum_r v_r x_r``: the residual from the runs' plain average. The ridge penalises ``v``, not the
intercept, so shrinking pulls the effective weights ``w_r = 1/R + v_r`` toward the plain average (plus a fitted
per-coordinate bias) rather than toward zero, and nothing forces the weights to sum to 1 (a run that shrinks
faces toward the mean face can be scaled back). One strength, in units of each coordinate's feature variance, is
shared by all coordinates and chosen by leave-one-fold-out over the folds the fit may look at.

Everything is solved from the moment matrices of ``FoldStats.point``: batched (R x R) normal equations over the
2P coordinates in numpy, which costs nothing next to reading the predictions (sklearn's Ridge would take the rows
themselves, once per coordinate, fold and strength).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from kit.ensemble.stats import FoldStats

# Ridge strengths tried (times the coordinate's mean feature variance); inf = the runs' mean plus a bias.
RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, np.inf)
DEFAULT_RIDGE = 1e-3  # with a single fold to fit on there is nothing to choose with


def grid_label(value: float) -> str:
    return "inf" if np.isinf(value) else f"{value:g}"


@dataclass(frozen=True)
class PointRidge:
    """A fitted per-coordinate stacker: ``y_q = intercept_q + sum_r weights_qr x_qr``."""

    weights: np.ndarray  # (Q, R)
    intercept: np.ndarray  # (Q,)
    strength: float
    fitted_on: tuple[int, ...]  # the folds whose rows it was fitted on
    info: dict = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions (n, Q) from the runs' coordinates (n, Q, R)."""
        return self.predict_runs(np.moveaxis(x, -1, 0))

    def predict_runs(self, x: np.ndarray) -> np.ndarray:
        """Predictions (n, Q) from the runs' coordinates, run-major (R, n, Q)."""
        weights = np.ascontiguousarray(self.weights.T)  # R, Q
        out = self.intercept + x[0] * weights[0]
        for r in range(1, len(x)):
            out += x[r] * weights[r]
        return out

    def residual_coefficients(self, ref: np.ndarray) -> np.ndarray:
        """``beta`` (Q, R+2) with ``y - prediction = beta . z`` for the ``z`` of ``FoldStats.point``."""
        r = self.weights.shape[1]
        v = self.weights - 1.0 / r
        b = self.intercept + v.sum(axis=1) * ref  # the intercept of the model on z, where x is offset by ref
        return np.concatenate([-b[:, None], -v, np.ones((len(b), 1))], axis=1)


def solve_point_ridge(moments: np.ndarray, ref: np.ndarray, strengths, fitted_on=()) -> list[PointRidge]:
    """The stacker for each strength, from the summed moments (Q, R+2, R+2) of the rows it is fitted on."""
    r = moments.shape[-1] - 2
    n = moments[:, 0, 0]
    sx, st = moments[:, 0, 1 : r + 1], moments[:, 0, r + 1]
    cxx = moments[:, 1 : r + 1, 1 : r + 1] - sx[:, :, None] * sx[:, None, :] / n[:, None, None]
    cxt = moments[:, 1 : r + 1, r + 1] - sx * st[:, None] / n[:, None]
    scale = np.trace(cxx, axis1=1, axis2=2) / r
    scale = np.where(scale > 0, scale, 1.0)
    eye = np.eye(r)
    models = []
    for strength in strengths:
        if np.isinf(strength):
            v = np.zeros_like(cxt)
        else:
            # A tiny jitter keeps identical runs (a singular Gram) solvable at strength 0.
            a = cxx + ((strength + 1e-12) * scale)[:, None, None] * eye
            v = np.linalg.solve(a, cxt[..., None])[..., 0]
        b = (st - (v * sx).sum(axis=1)) / n
        models.append(PointRidge(1.0 / r + v, b - v.sum(axis=1) * ref, float(strength), tuple(fitted_on)))
    return models


def point_sse(model: PointRidge, moments: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Squared error of each coordinate (..., Q) on the rows of ``moments`` (..., Q, R+2, R+2)."""
    beta = model.residual_coefficients(ref)
    return np.maximum(np.einsum("qi,...qij,qj->...q", beta, moments, beta), 0.0)


def fit_point_ridge(stats: FoldStats, grid: tuple[float, ...] = RIDGE_GRID) -> PointRidge:
    """The stacker fitted on all rows of ``stats``, its strength chosen by leave-one-fold-out over its folds."""
    total = stats.point.sum(axis=0)
    if len(stats.folds) < 2:
        (model,) = solve_point_ridge(total, stats.ref, [DEFAULT_RIDGE], stats.folds)
        return replace(model, info={"strength": grid_label(DEFAULT_RIDGE), "cv_sse": None})
    errors = np.zeros(len(grid))
    for i in range(len(stats.folds)):
        rest = total - stats.point[i]
        for g, model in enumerate(solve_point_ridge(rest, stats.ref, grid)):
            errors[g] += point_sse(model, stats.point[i], stats.ref).sum()
    best = grid[int(np.argmin(errors))]
    (model,) = solve_point_ridge(total, stats.ref, [best], stats.folds)
    info = {
        "strength": grid_label(best),
        "cv_sse": {grid_label(s): float(e) for s, e in zip(grid, errors, strict=True)},
    }
    return replace(model, info=info)
