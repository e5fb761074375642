"""Sufficient statistics of the runs' OOF predictions, per fold, in one streaming pass over the rows.

Every stacker here is linear in the runs' predictions, so it is fitted and scored from moment matrices summed over
the folds it may look at: a fold's rows enter a fit only through that fold's entry of the leading axis, which
``FoldStats.restrict`` drops. The predictions are read once, in row chunks, and never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dsyrk

from kit.ensemble.nested import point_grams
from kit.ensemble.rows import add_products, fold_chunks, symmetric
from kit.io import rows_in

CHUNK_BYTES = 1 << 28  # one chunk of rows and what is formed from it, counted at 8 bytes a value


def frame(mean_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's centroid (n, 2) and scale (n,): the RMS distance of its points from the centroid.

    Args:
        mean_points: (n, P, 2) the runs' mean prediction (known at test time too, unlike the truth).
    """
    centroid = mean_points.mean(axis=1)
    squares = (mean_points - centroid[:, None, :]) ** 2
    scale = np.sqrt((squares[..., 0] + squares[..., 1]).mean(axis=-1))
    return centroid, np.maximum(scale, 1e-6)


@dataclass(frozen=True)
class FoldStats:
    """Per-fold moments of the runs' OOF predictions and the truth; entry i of every array is fold ``folds[i]``.

    With Q = 2P coordinates (point-major: point p's x then y), R runs, ``x`` a run's coordinate, ``m`` the runs'
    mean and ``y`` the truth:

    - ``point`` (F, Q, R+2, R+2): moments of ``z = [1, x_1 - ref, ..., x_R - ref, y - m]`` per coordinate, what a
      per-coordinate linear stacker needs (``ref`` only conditions the sums; it cancels in every fit);
    - ``resid`` (F, Q+1, Q+1) or None: moments of ``[s, y - m]`` over whole faces (``s`` the face's scale), i.e. the
      scale-weighted moments of ``[1, (y - m) / s]``, the normalised residual of the runs' mean (its PCA basis);
    - ``grams`` (F, P, R, R): the residual Grams that blends are fitted on (``kit.ensemble.nested``).
    """

    folds: tuple[int, ...]
    rows: np.ndarray  # (F,) rows per fold
    ref: np.ndarray  # (Q,)
    point: np.ndarray
    resid: np.ndarray | None
    grams: np.ndarray

    @property
    def n_runs(self) -> int:
        return self.point.shape[-1] - 2

    def restrict(self, folds: Sequence[int]) -> FoldStats:
        """The statistics of ``folds`` only: nothing of the other folds' rows is left in the result."""
        index = [self.folds.index(f) for f in folds]
        return FoldStats(
            folds=tuple(folds),
            rows=self.rows[index],
            ref=self.ref,
            point=self.point[index],
            resid=None if self.resid is None else self.resid[index],
            grams=self.grams[index],
        )


def rows_per_chunk(row_bytes: int) -> int:
    """Rows in a chunk of about ``CHUNK_BYTES`` at ``row_bytes`` a row."""
    return rows_in(row_bytes, CHUNK_BYTES)


def _point_moments(counts: np.ndarray, sums: np.ndarray, products: np.ndarray) -> np.ndarray:
    """``FoldStats.point`` (F, Q, R+2, R+2) from the moments of ``v = [x_1 - y, ..., x_R - y, m - ref]``: the
    counts (F,), sums (F, R+1, Q) and products (F, R+1, R+1, Q) (upper triangle) of ``v`` per coordinate.

    ``z = [1, x_1 - ref, ..., x_R - ref, y - m] = T [1, v]``, since ``x_r - ref = (x_r - y) - (m - y) + (m - ref)``
    and ``y - m`` is minus the mean of the ``x_r - y``: the residual products that the Grams need give the
    ``point`` moments too.
    """
    n_folds, k, q = sums.shape
    r = k - 1
    moments = np.empty((n_folds, q, k + 1, k + 1))
    moments[:, :, 0, 0] = counts[:, None]
    moments[:, :, 0, 1:] = moments[:, :, 1:, 0] = sums.transpose(0, 2, 1)
    moments[:, :, 1:, 1:] = symmetric(products).transpose(0, 3, 1, 2)
    t = np.zeros((k + 1, k + 1))
    t[0, 0] = 1.0
    t[1 : r + 1, 1 : r + 1] = np.eye(r) - 1.0 / r
    t[1 : r + 1, r + 1] = 1.0
    t[r + 1, 1 : r + 1] = -1.0 / r
    return np.einsum("ij,fqjk,lk->fqil", t, moments, t)


def accumulate(
    predictions: Sequence[np.ndarray], truth: np.ndarray, folds: np.ndarray, n_folds: int, shape: bool = False
) -> FoldStats:
    """One pass over the rows: the ``FoldStats`` of folds ``0..n_folds-1``.

    Args:
        predictions: R arrays (N, P, 2), e.g. memory-mapped OOF predictions.
        truth: (N, P, 2) answers.
        folds: (N,) fold of each row in ``[0, n_folds)``.
        shape: also accumulate ``resid`` (Q+1)^2 per fold, what ``pca-ridge`` needs.
    """
    n, p, _ = truth.shape
    r, q = len(predictions), 2 * p
    sums = np.zeros((n_folds, r + 1, q))  # of v = [x_1 - y, ..., x_R - y, m - ref], per coordinate
    products = np.zeros((n_folds, r + 1, r + 1, q))  # of v_i * v_j, upper triangle (add_products)
    resid = np.zeros((n_folds, q + 1, q + 1)) if shape else None  # lower triangle until the end
    ref = None
    step = rows_per_chunk(8 * q * (r + 3))
    buffer = np.empty((min(len(folds), step), q + 1)) if shape else None
    for chunk in fold_chunks(predictions, truth, folds, step, "OOF rows: stack statistics"):
        for f, rows in chunk.groups:
            sv = buffer[: rows.stop - rows.start] if shape else None  # [s, y - m] of the fold's rows
            for block, x, y in chunk.blocks(rows):
                m = x.mean(axis=0)
                if ref is None:
                    ref = m.mean(axis=0)
                v = np.empty((r + 1, len(y), q))
                np.subtract(x, y, out=v[:r])
                np.subtract(m, ref, out=v[r])
                sums[f] += v.sum(axis=1)
                add_products(products[f], v)
                if shape:
                    at = slice(block.start - rows.start, block.stop - rows.start)
                    sv[at, 0] = frame(m.reshape(-1, p, 2))[1]
                    np.subtract(y, m, out=sv[at, 1:])
            if shape:  # resid[f] += sv.T @ sv in place, one triangle (the upper one of its Fortran-order transpose)
                dsyrk(1.0, sv.T, beta=1.0, c=resid[f].T, overwrite_c=1)
    if shape:
        upper = np.triu_indices(q + 1, 1)
        resid[:, upper[0], upper[1]] = resid[:, upper[1], upper[0]]
    counts = np.bincount(folds, minlength=n_folds)
    return FoldStats(
        folds=tuple(range(n_folds)),
        rows=counts,
        ref=np.zeros(q) if ref is None else ref,
        point=_point_moments(counts, sums, products),
        resid=resid,
        grams=point_grams(products[:, :r, :r]),
    )
