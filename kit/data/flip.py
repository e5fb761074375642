"""Left/right point permutation, derived from the data: mirror the mean shape and match points.

The permutation is data used by both augmentation (a flipped image also swaps point identities) and flip TTA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from kit.errors import DataError
from kit.io import read_rows, write_text

_MEDIAN_SHAPES = 2000  # shapes the robust (median) reference shape is computed from
_CHUNK = 2000  # shapes transformed at once


def _normalise(shapes: np.ndarray) -> np.ndarray:
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    scale = np.sqrt(np.einsum("npk,npk->n", centred, centred) / shapes.shape[1])
    centred /= np.maximum(scale, 1e-12)[:, None, None]
    return centred


def _rotation_onto(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotations (B, 2, 2) that best map centred shapes ``source`` (B, P, 2) onto ``target`` (P, 2) (Kabsch)."""
    cov = np.swapaxes(source, 1, 2) @ target
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(source), 2))
    fix[:, 1] = d
    return (u * fix[:, None, :]) @ vt


def _align(shapes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return shapes @ _rotation_onto(shapes, reference)


def _inliers(residuals: np.ndarray, factor: float) -> np.ndarray:
    """Shapes whose residual is not an outlier: within ``factor`` x the median, or within 5 robust sigmas."""
    median = np.median(residuals)
    sigma = 1.4826 * np.median(np.abs(residuals - median))
    return residuals <= max(factor * median, median + 5.0 * sigma)


def _normalised_sample(points: np.ndarray, max_shapes: int) -> np.ndarray:
    """Up to ``max_shapes`` of the (N, P, 2) shapes, evenly spaced, normalised as float64.

    Read in chunks: the labels may be a memory-mapped file, and only the sample is ever held.
    """
    n = len(points)
    rows = np.linspace(0, n - 1, max_shapes).astype(int) if n > max_shapes else np.arange(n)
    shapes = np.empty((len(rows), *np.shape(points)[1:]), dtype=np.float64)
    for start in range(0, len(rows), _CHUNK):
        shapes[start : start + _CHUNK] = _normalise(read_rows(points, rows[start : start + _CHUNK], np.float64))
    return shapes


def _aligned(shapes: np.ndarray, reference: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``shapes`` aligned onto ``reference`` chunk by chunk, with the rows of each chunk."""
    for start in range(0, len(shapes), _CHUNK):
        rows = slice(start, min(len(shapes), start + _CHUNK))
        yield rows, _align(shapes[rows], reference)


def mean_shape(
    points: np.ndarray, iterations: int = 3, max_shapes: int = 20000, outlier_factor: float = 3.0
) -> np.ndarray:
    """Generalised Procrustes mean of (N, P, 2) shapes: translation, scale and rotation removed.

    Robust to a minority of corrupt rows (such as a few wild coordinates): the shapes are first aligned to the
    coordinate-wise median shape (of up to 2000 of them); those whose Procrustes residual is an outlier (over
    ``outlier_factor`` x the median residual and 5 robust sigmas above it) are dropped, and the mean of the rest
    is refined. Up to ``max_shapes`` shapes, evenly spaced, are used.

    Returns a centred (P, 2) shape of unit RMS radius, oriented like the median of the normalised shapes.
    """
    shapes = _normalised_sample(points, max_shapes)
    sample = shapes[np.linspace(0, len(shapes) - 1, min(len(shapes), _MEDIAN_SHAPES)).astype(int)]
    reference = _normalise(np.median(sample, axis=0, keepdims=True))[0]
    for _ in range(iterations):
        reference = _normalise(np.median(_align(sample, reference), axis=0, keepdims=True))[0]
    residuals = np.empty(len(shapes))
    for rows, aligned in _aligned(shapes, reference):
        residuals[rows] = np.sqrt(np.square(aligned - reference).sum(axis=2).mean(axis=1))
    keep = _inliers(residuals, outlier_factor)
    for _ in range(iterations):
        total = sum(aligned[keep[rows]].sum(axis=0) for rows, aligned in _aligned(shapes, reference))
        reference = _normalise(total[None] / keep.sum())[0]
    return reference


def _reflection(angle: float) -> np.ndarray:
    """(2, 2) matrix, for row vectors, of the mirror across the line through the origin at ``angle``."""
    c, s = np.cos(2.0 * angle), np.sin(2.0 * angle)
    return np.array([[c, s], [s, -c]])


def _fit_reflection(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The mirror through the origin (an orthogonal matrix of determinant -1) best taking ``source`` to ``target``."""
    u, _, vt = np.linalg.svd(source.T @ target)
    d = -np.sign(np.linalg.det(u @ vt))
    return (u * np.array([1.0, d])) @ vt


def derive_flip_permutation(points: np.ndarray, iterations: int = 10, max_asymmetry: float = 1.0) -> np.ndarray:
    """Left/right permutation from (N, P, 2) training shapes.

    Mirror the Procrustes mean shape across the axis that best maps it onto itself (searched over all
    orientations, so a tilted mean is fine), match mirrored points to original ones by optimal assignment, and
    refit the mirror to the matched pairs until the matching is stable.

    Args:
        points: training shapes in any pixel frame.
        iterations: refits of the mirror axis at most.
        max_asymmetry: largest accepted RMS mismatch of the matched pairs, in units of the median distance
            between neighbouring points of the mean shape (a mirror-symmetric layout gives ~0.2 or less, random
            points ~2).

    Raises:
        DataError: the layout is not mirror-symmetric.
    """
    reference = mean_shape(points)
    tree = cKDTree(reference)
    angles = np.deg2rad(np.arange(0.0, 180.0, 1.0))
    scores = [np.square(tree.query(reference @ _reflection(a))[0]).sum() for a in angles]
    mirror = _reflection(angles[int(np.argmin(scores))])
    perm = np.arange(len(reference))
    for step in range(iterations):
        cost = cdist(reference @ mirror, reference, "sqeuclidean")
        # Pairing i with j costs both directions: the optimum of a symmetric cost is an involution (barring ties).
        _, new_perm = linear_sum_assignment(cost + cost.T)
        if step and np.array_equal(new_perm, perm):
            break
        perm = new_perm
        mirror = _fit_reflection(reference, reference[perm])
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        bad = int(np.flatnonzero(perm[perm] != np.arange(len(perm)))[0])
        raise DataError(f"derived flip permutation is not an involution (point {bad}): layout is not symmetric")
    residual = np.sqrt(np.square(reference @ mirror - reference[perm]).sum(axis=1).mean())
    spacing = float(np.median(tree.query(reference, k=2)[0][:, 1]))
    asymmetry = residual / max(spacing, 1e-12)
    if asymmetry > max_asymmetry:
        raise DataError(
            f"the mean shape is not mirror-symmetric (matched pairs are {asymmetry:.2f} point spacings apart, "
            f"at most {max_asymmetry} accepted): no flip permutation"
        )
    return perm.astype(np.int64)


def save_permutation(path: str | Path, perm: np.ndarray) -> None:
    """Write a permutation as one index per line, atomically."""
    write_text(path, "".join(f"{int(i)}\n" for i in perm))


def load_permutation(path: str | Path, n_points: int | None = None) -> np.ndarray:
    """Read a permutation file (one index per line) and check it is a valid involution.

    Raises:
        DataError: the file is missing, malformed, of the wrong length, or not an involution.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    values = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                values.append(int(line))
            except ValueError:
                raise DataError(f"{path}: line {line_no}: not an integer: {line[:40]!r}") from None
    perm = np.array(values, dtype=np.int64)
    if n_points is not None and len(perm) != n_points:
        raise DataError(f"{path}: {len(perm)} entries, expected {n_points}")
    if not np.array_equal(np.sort(perm), np.arange(len(perm))):
        raise DataError(f"{path}: not a permutation of 0..{len(perm) - 1}")
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        bad = int(np.flatnonzero(perm[perm] != np.arange(len(perm)))[0])
        raise DataError(f"{path}: not an involution (point {bad} maps to {perm[bad]}, which maps to {perm[perm[bad]]})")
    return perm


def flip_points(points: np.ndarray, width: float | np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Mirror (..., P, 2) points horizontally and swap left/right identities.

    Args:
        points: pixel coordinates, pixel centres at integers.
        width: image width in pixels; an array of shape (...) gives one width per shape.
        perm: the flip permutation (an involution).
    """
    flipped = np.array(points, dtype=np.float64, copy=True)
    width = np.asarray(width, dtype=np.float64)
    flipped[..., 0] = (width[..., None] - 1.0) - flipped[..., 0]
    return flipped[..., perm, :]
