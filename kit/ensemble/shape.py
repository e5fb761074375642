"""The ``pca-ridge`` stacker: the ``ridge`` stacker, then a correction of errors that points share.

Per-coordinate weights can't undo an error that moves many points together (a run that flattens smiles or
underestimates head turns by a fraction): it shows in every point, but as a deformation of the whole face. Stage 2
works in each face's normalised frame (the centroid and the RMS radius of the runs' mean prediction, known at test
time too) on a PCA basis of the shared errors: the leading K components of the scale-weighted covariance of the
normalised residual ``(y - m) / s`` of the runs' mean, over the training rows. It regresses the stage-1 residual's
coefficients in that basis on every run's coefficients (R*K features, K outputs, intercept) with a ridge toward no
correction, so strength inf is exactly the ``ridge`` stacker. K and the strength are chosen by leave-one-fold-out
over the folds the fit may look at; rows are weighted by ``s**2`` so the fit minimises the error in pixels.

The fit and every score come from per-fold moments (``ShapeStats``), accumulated in one more pass over the rows for
each (stage-1 stacker, basis) pair: both are fitted on a set of folds, then applied to every fold's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.linalg import eigh
from scipy.linalg.blas import dgemm

from kit.ensemble.ridge import PointRidge, grid_label
from kit.ensemble.rows import fold_chunks
from kit.ensemble.stats import FoldStats, frame, rows_per_chunk

COMPONENT_GRID = (5, 10, 20, 40)  # K tried (at most 2P)
CORRECTION_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, np.inf)  # times the mean feature variance
DEFAULT_CORRECTION = (20, 1e-2)  # with a single fold to fit on


@dataclass(frozen=True)
class ShapeBasis:
    """Orthonormal directions (D, K) of the shared error, leading first, in the normalised frame (D = 2P)."""

    components: np.ndarray
    variance: np.ndarray  # (K,) scale-weighted variance of the residual along each
    fitted_on: tuple[int, ...]

    @property
    def k_max(self) -> int:
        return self.components.shape[1]


def component_grid(n_coords: int) -> tuple[int, ...]:
    grid = tuple(k for k in COMPONENT_GRID if k <= n_coords)
    return grid or (n_coords,)


def fit_basis(stats: FoldStats, k_max: int) -> ShapeBasis:
    """The leading ``k_max`` components of the runs' mean's normalised residual over the rows of ``stats``."""
    m = stats.resid.sum(axis=0)
    weight, first = m[0, 0], m[0, 1:]
    cov = m[1:, 1:] - np.outer(first, first) / weight
    d, k = len(cov), min(k_max, len(cov))
    values, vectors = eigh(0.5 * (cov + cov.T), subset_by_index=[d - k, d - 1])  # the leading k only
    order = np.argsort(values)[::-1]
    return ShapeBasis(vectors[:, order], np.maximum(values[order], 0.0) / weight, stats.folds)


def normalised_runs(x: np.ndarray, centroid: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each run's prediction in its face's normalised frame: (n, Q, R) -> (n, R, Q)."""
    return np.ascontiguousarray(_normalised(np.moveaxis(x, -1, 0), centroid, scale).transpose(1, 0, 2))


def _normalised(x: np.ndarray, centroid: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``normalised_runs`` run-major: (R, n, Q) -> (R, n, Q)."""
    out = x - np.tile(centroid, x.shape[-1] // 2)  # (n, Q): each coordinate's centroid
    out /= scale[:, None]
    return out


def shape_features(normalised: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Each run's normalised prediction (R, n, Q) in the basis ``components`` (Q, K): (n, R * K), run-major."""
    r, n, q = normalised.shape
    projected = normalised.reshape(r * n, q) @ components
    return projected.reshape(r, n, -1).transpose(1, 0, 2).reshape(n, -1)


@dataclass(frozen=True)
class ShapeStats:
    """Per-fold moments of the stage-2 regression for one stage-1 stacker and basis (both fitted on ``fitted_on``).

    With ``e = y - stage1(x)`` (pixels, D) and ``g = [1, features]`` (1 + R*K), ``s`` the face's scale: ``gg``
    (F, G, G) = sum (s g)(s g)^T, ``rg`` (F, D, G) = sum e (s g)^T, ``rr`` (F, D) = sum e**2.
    """

    folds: tuple[int, ...]
    fitted_on: tuple[int, ...]
    gg: np.ndarray
    rg: np.ndarray
    rr: np.ndarray
    rows: np.ndarray

    def restrict(self, folds: Sequence[int]) -> ShapeStats:
        index = [self.folds.index(f) for f in folds]
        return ShapeStats(
            tuple(folds), self.fitted_on, self.gg[index], self.rg[index], self.rr[index], self.rows[index]
        )


def shape_stats(
    predictions: Sequence[np.ndarray],
    truth: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    pairs: Sequence[tuple[PointRidge, ShapeBasis]],
) -> list[ShapeStats]:
    """One pass over the rows: the ``ShapeStats`` of every fold for each (stage-1 stacker, basis) pair."""
    n, p, _ = truth.shape
    r, q = len(predictions), 2 * p
    sizes = [1 + r * basis.k_max for _, basis in pairs]
    gg = [np.zeros((n_folds, g, g)) for g in sizes]
    rg = [np.zeros((n_folds, q, g)) for g in sizes]
    rr = [np.zeros((n_folds, q)) for _ in sizes]
    components = np.concatenate([basis.components for _, basis in pairs], axis=1)  # every basis, projected at once
    ends = np.cumsum([basis.k_max for _, basis in pairs])
    step = rows_per_chunk(8 * q * (r + 1 + len(pairs)))
    e_buffer = np.empty((len(pairs), min(n, step), q))
    sg_buffer = [np.empty((min(n, step), g)) for g in sizes]
    for chunk in fold_chunks(predictions, truth, folds, step, "OOF rows: shape statistics"):
        for f, rows in chunk.groups:
            e = e_buffer[:, : rows.stop - rows.start]  # y - stage1(x) of each pair, the fold's rows
            sg = [buffer[: rows.stop - rows.start] for buffer in sg_buffer]
            for block, x, y in chunk.blocks(rows):
                at = slice(block.start - rows.start, block.stop - rows.start)
                centroid, scale = frame(x.mean(axis=0).reshape(-1, p, 2))
                features = shape_features(_normalised(x, centroid, scale), components).reshape(len(y), r, -1)
                for i, (stage1, basis) in enumerate(pairs):
                    np.subtract(y, stage1.predict_runs(x), out=e[i, at])
                    rr[i][f] += np.einsum("nq,nq->q", e[i, at], e[i, at])
                    sg[i][at, 0] = scale
                    own = features[:, :, ends[i] - basis.k_max : ends[i]].reshape(len(y), -1)
                    np.multiply(scale[:, None], own, out=sg[i][at, 1:])
            for i in range(len(pairs)):
                gg[i][f] += sg[i].T @ sg[i]
                dgemm(1.0, sg[i].T, e[i].T, beta=1.0, c=rg[i][f].T, trans_b=1, overwrite_c=1)  # rg += e^T sg
    counts = np.bincount(folds, minlength=n_folds)
    everything = tuple(range(n_folds))
    fitted_on = [tuple(sorted(set(stage1.fitted_on) | set(basis.fitted_on))) for stage1, basis in pairs]
    return [ShapeStats(everything, fitted_on[i], gg[i], rg[i], rr[i], counts) for i in range(len(pairs))]


def _index(n_runs: int, k_max: int, k: int) -> np.ndarray:
    """Positions in ``g`` of the intercept and the first ``k`` coefficients of every run."""
    runs = 1 + np.arange(n_runs)[:, None] * k_max + np.arange(k)[None, :]
    return np.concatenate([[0], runs.ravel()])


@dataclass(frozen=True)
class ShapeCorrection:
    """Stage 2: the normalised correction ``U_K theta [1, features_K]``, added to stage 1 times the face's scale."""

    basis: ShapeBasis
    k: int
    strength: float
    theta: np.ndarray  # (K, 1 + R*K); zero: no correction
    fitted_on: tuple[int, ...]
    info: dict = field(default_factory=dict)

    def coefficients(self) -> np.ndarray:
        """(D, 1 + R*K): the correction of each normalised coordinate as a linear function of ``g_K``."""
        return self.basis.components[:, : self.k] @ self.theta

    def delta(self, features: np.ndarray) -> np.ndarray:
        """Normalised corrections (n, D) from the features of the leading ``k`` components (n, R * k)."""
        g = np.concatenate([np.ones((len(features), 1)), features], axis=1)
        return (g @ self.theta.T) @ self.basis.components[:, : self.k].T


def solve_correction(
    gg: np.ndarray, rg: np.ndarray, basis: ShapeBasis, k: int, strengths, fitted_on=()
) -> list[ShapeCorrection]:
    """Stage 2 with ``k`` components for each strength, from moments summed over the rows it is fitted on."""
    n_runs = (gg.shape[-1] - 1) // basis.k_max
    idx = _index(n_runs, basis.k_max, k)
    g = gg[np.ix_(idx, idx)]
    a = basis.components[:, :k].T @ rg[:, idx]  # K, G: sum s a (s g)^T with a = U^T e / s
    weight, mean = g[0, 0], g[0, 1:] / g[0, 0]
    cff = g[1:, 1:] - weight * np.outer(mean, mean)
    caf = a[:, 1:] - np.outer(a[:, 0], mean)
    scale = np.trace(cff) / max(1, cff.shape[0])
    scale = scale if scale > 0 else 1.0
    models = []
    for strength in strengths:
        if np.isinf(strength):
            theta = np.zeros((k, len(idx)))
        else:
            w = np.linalg.solve(cff + (strength + 1e-12) * scale * np.eye(len(cff)), caf.T).T  # K, R*K
            b = a[:, 0] / weight - w @ mean
            theta = np.concatenate([b[:, None], w], axis=1)
        models.append(ShapeCorrection(basis, k, float(strength), theta, tuple(fitted_on)))
    return models


def correction_sse(model: ShapeCorrection, stats: ShapeStats) -> np.ndarray:
    """Squared error in pixels of each coordinate (D,) after the correction, over the folds of ``stats``."""
    n_runs = (stats.gg.shape[-1] - 1) // model.basis.k_max
    idx = _index(n_runs, model.basis.k_max, model.k)
    gg = stats.gg.sum(axis=0)[np.ix_(idx, idx)]
    rg = stats.rg.sum(axis=0)[:, idx]
    coef = model.coefficients()
    sse = stats.rr.sum(axis=0) - 2 * (coef * rg).sum(axis=1) + ((coef @ gg) * coef).sum(axis=1)
    return np.maximum(sse, 0.0)


def fit_correction(
    stats: ShapeStats,
    basis: ShapeBasis,
    components: tuple[int, ...] | None = None,
    strengths: tuple[float, ...] = CORRECTION_GRID,
) -> ShapeCorrection:
    """Stage 2 fitted on all rows of ``stats``, K and strength chosen by leave-one-fold-out over its folds."""
    components = components or component_grid(basis.k_max)
    components = tuple(k for k in components if k <= basis.k_max)
    gg, rg = stats.gg.sum(axis=0), stats.rg.sum(axis=0)
    fitted_on = tuple(sorted(set(stats.folds) | set(stats.fitted_on)))
    if len(stats.folds) < 2:
        k, strength = DEFAULT_CORRECTION
        k = min(k, basis.k_max)
        (model,) = solve_correction(gg, rg, basis, k, [strength], fitted_on)
        return _with_info(model, None)
    errors = {}
    for i, f in enumerate(stats.folds):
        held = stats.restrict([f])
        for k in components:
            for model in solve_correction(gg - stats.gg[i], rg - stats.rg[i], basis, k, strengths):
                key = (k, model.strength)
                errors[key] = errors.get(key, 0.0) + float(correction_sse(model, held).sum())
    k, strength = min(errors, key=errors.get)
    (model,) = solve_correction(gg, rg, basis, k, [strength], fitted_on)
    return _with_info(model, {f"{k}/{grid_label(s)}": e for (k, s), e in errors.items()})


def _with_info(model: ShapeCorrection, cv_sse: dict | None) -> ShapeCorrection:
    return replace(model, info={"components": model.k, "strength": grid_label(model.strength), "cv_sse": cv_sse})


@dataclass(frozen=True)
class PcaRidge:
    """The ``pca-ridge`` stacker: stage 1 per coordinate, then the shared-error correction."""

    stage1: PointRidge
    correction: ShapeCorrection

    @property
    def fitted_on(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.stage1.fitted_on) | set(self.correction.fitted_on)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions (n, Q) from the runs' coordinates (n, Q, R)."""
        return self.predict_runs(np.moveaxis(x, -1, 0))

    def predict_runs(self, x: np.ndarray) -> np.ndarray:
        """Predictions (n, Q) from the runs' coordinates, run-major (R, n, Q)."""
        _, n, q = x.shape
        centroid, scale = frame(x.mean(axis=0).reshape(n, q // 2, 2))
        leading = self.correction.basis.components[:, : self.correction.k]
        features = shape_features(_normalised(x, centroid, scale), leading)
        return self.stage1.predict_runs(x) + scale[:, None] * self.correction.delta(features)
