"""Sufficient statistics of the runs' OOF predictions, per fold, in one streaming pass over the rows.

Every stacker here is linear in the runs' predictions, so it is fitted and scored from moment matrices summed over
the folds it may look at: a fold's rows enter a fit only through that fold's entry of the leading axis, which
``FoldStats.restrict`` drops. The predictions are read once, in row chunks, and never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.blend.nested import fold_point_grams

CHUNK_BYTES = 1 << 26  # float64 working set of one chunk of rows


def frame(mean_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's centroid (n, 2) and scale (n,): the RMS distance of its points from the centroid.

    Args:
        mean_points: (n, P, 2) the runs' mean prediction (known at test time too, unlike the truth).
    """
    centroid = mean_points.mean(axis=1)
    scale = np.sqrt(((mean_points - centroid[:, None, :]) ** 2).sum(axis=-1).mean(axis=-1))
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
    - ``grams`` (F, P, R, R): the residual Grams that blends are fitted on (``kit.blend.nested``).
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


def row_chunks(n: int, row_bytes: int) -> list[slice]:
    """Slices of ``range(n)`` of about ``CHUNK_BYTES`` each at ``row_bytes`` a row."""
    chunk = max(1, CHUNK_BYTES // max(1, row_bytes))
    return [slice(start, min(n, start + chunk)) for start in range(0, n, chunk)]


def stack_chunk(predictions: Sequence[np.ndarray], rows: slice) -> np.ndarray:
    """Rows of the runs' predictions as one float64 array (n, Q, R)."""
    return np.stack(
        [np.asarray(pred[rows], dtype=np.float64).reshape(-1, 2 * pred.shape[1]) for pred in predictions], -1
    )


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
    point = np.zeros((n_folds, q, r + 2, r + 2))
    resid = np.zeros((n_folds, q + 1, q + 1)) if shape else None
    grams = np.zeros((n_folds, p, r, r))
    ref = None
    for rows in row_chunks(n, 8 * q * (2 * r + 4)):
        x = stack_chunk(predictions, rows)  # n, Q, R
        y = np.asarray(truth[rows], dtype=np.float64).reshape(-1, q)
        m = x.mean(axis=-1)
        if ref is None:
            ref = m.mean(axis=0)
        z = np.concatenate([np.ones(x.shape[:2] + (1,)), x - ref[:, None], (y - m)[..., None]], axis=-1)
        fold = folds[rows]
        if shape:
            _, scale = frame(m.reshape(-1, p, 2))
            v = np.concatenate([scale[:, None], y - m], axis=1)
        for f in np.unique(fold):
            mask = fold == f
            zf = np.ascontiguousarray(z[mask].transpose(1, 2, 0))  # Q, R+2, rows
            point[f] += zf @ zf.transpose(0, 2, 1)
            if shape:
                vf = v[mask]
                resid[f] += vf.T @ vf  # one operand twice: numpy computes half of it (syrk)
        grams += fold_point_grams([x[..., i].reshape(-1, p, 2) for i in range(r)], y.reshape(-1, p, 2), fold, n_folds)
    return FoldStats(
        folds=tuple(range(n_folds)),
        rows=np.bincount(folds, minlength=n_folds),
        ref=np.zeros(q) if ref is None else ref,
        point=point,
        resid=resid,
        grams=grams,
    )
