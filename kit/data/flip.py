"""Left/right point permutation, derived from the data: mirror the mean shape and match points.

The permutation is data used by both augmentation (a flipped image also swaps point identities) and flip TTA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from kit.errors import DataError
from kit.io import write_text


def _normalise(shapes: np.ndarray) -> np.ndarray:
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).sum(axis=(1, 2), keepdims=True) / shapes.shape[1])
    return centred / np.maximum(scale, 1e-12)


def _rotation_onto(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotations (B, 2, 2) that best map centred shapes ``source`` (B, P, 2) onto ``target`` (P, 2) (Kabsch)."""
    cov = np.einsum("bpi,pj->bij", source, target)
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(source), 2))
    fix[:, 1] = d
    return (u * fix[:, None, :]) @ vt


def mean_shape(points: np.ndarray, iterations: int = 3, max_shapes: int = 20000) -> np.ndarray:
    """Generalised Procrustes mean of (N, P, 2) shapes: translation, scale and rotation removed."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) > max_shapes:
        points = points[np.linspace(0, len(points) - 1, max_shapes).astype(int)]
    shapes = _normalise(points)
    reference = shapes[0]
    for _ in range(iterations):
        aligned = np.einsum("bpi,bij->bpj", shapes, _rotation_onto(shapes, reference))
        reference = _normalise(aligned.mean(axis=0, keepdims=True))[0]
    return reference


def derive_flip_permutation(points: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Left/right permutation from (N, P, 2) training shapes.

    Mirror the mean shape (x -> -x), then match mirrored points to original ones by optimal assignment, refitting
    the mirror axis to the matched pairs a few times.

    Raises:
        DataError: the matching is not an involution (the layout is not mirror-symmetric).
    """
    reference = mean_shape(points)
    mirrored = reference * np.array([-1.0, 1.0])
    perm = np.arange(len(reference))
    for _ in range(iterations):
        cost = ((mirrored[:, None, :] - reference[None, :, :]) ** 2).sum(-1)
        _, new_perm = linear_sum_assignment(cost)
        # Refit a rotation + translation taking the mirrored shape onto its matched points.
        target = reference[new_perm]
        mu_s, mu_t = mirrored.mean(0), target.mean(0)
        rot = _rotation_onto((mirrored - mu_s)[None], target - mu_t)[0]
        mirrored = (mirrored - mu_s) @ rot + mu_t
        if np.array_equal(new_perm, perm):
            break
        perm = new_perm
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        bad = int(np.flatnonzero(perm[perm] != np.arange(len(perm)))[0])
        raise DataError(f"derived flip permutation is not an involution (point {bad}): layout is not symmetric")
    return perm.astype(np.int64)


def save_permutation(path: str | Path, perm: np.ndarray) -> None:
    write_text(path, "".join(f"{int(i)}\n" for i in perm))


def load_permutation(path: str | Path, n_points: int | None = None) -> np.ndarray:
    """Read a permutation file (one index per line) and check it is a valid involution."""
    path = Path(path)
    try:
        perm = np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: not a list of integers ({exc})") from None
    if n_points is not None and len(perm) != n_points:
        raise DataError(f"{path}: {len(perm)} entries, expected {n_points}")
    if not np.array_equal(np.sort(perm), np.arange(len(perm))):
        raise DataError(f"{path}: not a permutation of 0..{len(perm) - 1}")
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        raise DataError(f"{path}: not an involution (applying it twice must give the identity)")
    return perm


def flip_points(points: np.ndarray, width: float, perm: np.ndarray) -> np.ndarray:
    """Mirror (..., P, 2) points in an image of ``width`` pixels (centres at integers) and swap identities."""
    flipped = np.array(points, dtype=np.float64, copy=True)
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped[..., perm, :]
