"""The competition metric (mean squared error over all submitted coordinates, in original pixels) and the
scale-free error beside it: NME, the normalised mean error.

A face's NME is the mean over its points of the Euclidean point error, divided by the face's size: the distance
between two named points of the true landmarks (``nme_points``, e.g. the outer eye corners 36 and 45 of 68-point
faces: "inter-ocular"), else the face box, ``sqrt(width * height)`` of the bounding box of the true points. A set
of faces is summarised by the mean of their NMEs and the failure rate, the share of faces whose NME is above 10%,
both as percentages.

Every function here reads its (N, P, 2) inputs in row chunks, so memory-mapped arrays of any size work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.errors import DataError
from kit.io import read_rows

FAILURE_NME = 10.0  # percent: a face whose NME is above this is a failure
CHUNK_ROWS = 4096  # rows read at once


def _chunks(n: int, chunk: int):
    return (slice(start, min(n, start + chunk)) for start in range(0, n, chunk))


def _read(array: np.ndarray, rows) -> np.ndarray:
    return read_rows(array, rows, np.float64)


def _check_shapes(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: predictions {pred.shape}, answers {true.shape}")


def mse(pred: np.ndarray, true: np.ndarray, chunk: int = CHUNK_ROWS) -> float:
    """Mean squared error over every coordinate."""
    pred, true = np.asarray(pred), np.asarray(true)
    _check_shapes(pred, true)
    sse = sum(float(np.square(_read(pred, rows) - _read(true, rows)).sum()) for rows in _chunks(len(true), chunk))
    return sse / true.size if true.size else float("nan")


def per_point_mse(pred: np.ndarray, true: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """MSE of each point over images and both coordinates: (N, P, 2) -> (P,)."""
    pred, true = np.asarray(pred), np.asarray(true)
    _check_shapes(pred, true)
    total = np.zeros(true.shape[1], dtype=np.float64)
    for rows in _chunks(len(true), chunk):
        total += np.square(_read(pred, rows) - _read(true, rows)).sum(axis=(0, 2))
    return total / (len(true) * true.shape[2]) if len(true) else np.full(true.shape[1], np.nan)


def normalisation(nme_points: tuple[int, int] | None) -> str:
    """How the face size is measured, in words: ``points 36-45`` or ``face box``."""
    return "face box" if nme_points is None else f"points {nme_points[0]}-{nme_points[1]}"


def face_sizes(
    true: np.ndarray,
    nme_points: tuple[int, int] | None = None,
    *,
    source: str = "true landmarks",
    names: np.ndarray | None = None,
    chunk: int = CHUNK_ROWS,
) -> np.ndarray:
    """Each face's size (N,): the distance between the two ``nme_points``, else ``sqrt(width * height)`` of the
    bounding box of its points.

    Args:
        true: (N, P, 2) true landmarks (the full set of points of each face).
        source, names: what the error names: the table and each row's file name.

    Raises:
        DataError: a face's size is zero (or not finite), naming the row (0-based) and the normalisation.
    """
    n = len(true)
    sizes = np.empty(n, dtype=np.float64)
    for rows in _chunks(n, chunk):
        if nme_points is None:
            t = _read(true, rows)
            extent = t.max(axis=1) - t.min(axis=1)  # n, 2
            sizes[rows] = np.sqrt(extent[:, 0] * extent[:, 1])
        else:
            pair = _read(true, (rows, list(nme_points)))  # n, 2, 2
            sizes[rows] = np.hypot(*(pair[:, 0] - pair[:, 1]).T)
    bad = np.flatnonzero(~(sizes > 0) | ~np.isfinite(sizes))
    if len(bad):
        row = int(bad[0])
        face = f"row {row}" + (f" ({names[row]})" if names is not None else "")
        raise DataError(
            f"{source}: {face}: face size {sizes[row]:g} ({normalisation(nme_points)}), NME is undefined for it"
        )
    return sizes


def nme_per_face(
    pred: np.ndarray,
    true: np.ndarray,
    nme_points: tuple[int, int] | None = None,
    sizes: np.ndarray | None = None,
    chunk: int = CHUNK_ROWS,
) -> np.ndarray:
    """Each face's NME (N,), as a percentage of its size.

    Args:
        pred, true: (N, K, 2) predicted and true points (K: all P points, or a submission's requested points).
        sizes: (N,) face sizes, when ``true`` is not every point of each face (``face_sizes`` of the full answers);
            by default ``face_sizes(true, nme_points)``.
    """
    _check_shapes(pred, true)
    sizes = face_sizes(true, nme_points, chunk=chunk) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (len(true),):
        raise ValueError(f"{sizes.shape} face sizes for {len(true)} faces")
    out = np.empty(len(true), dtype=np.float64)
    for rows in _chunks(len(true), chunk):
        diff = _read(pred, rows) - _read(true, rows)
        out[rows] = np.sqrt((diff**2).sum(axis=-1)).mean(axis=-1)
    return 100.0 * out / sizes


def nme_summary(per_face: np.ndarray) -> tuple[float, float]:
    """The NME of a set of faces (the mean of ``per_face``, percent) and its failure rate (percent of faces whose
    NME is above ``FAILURE_NME``); NaN for no faces."""
    per_face = np.asarray(per_face, dtype=np.float64)
    if not len(per_face):
        return float("nan"), float("nan")
    return float(per_face.mean()), float(100.0 * np.mean(per_face > FAILURE_NME))


@dataclass(frozen=True)
class Scores:
    """A set of predictions scored: MSE in original pixels, NME and failure rate in percent."""

    mse: float
    nme: float  # mean over faces of the per-face NME, percent of the face size
    failure_rate: float  # percent of faces whose NME is above FAILURE_NME

    def __str__(self) -> str:
        return f"MSE {self.mse:.4f}  {format_nme(self.nme, self.failure_rate)}"


def format_nme(nme: float | None, failure_rate: float | None) -> str:
    """``NME 4.56%  >10%: 3.0%`` (empty when not known)."""
    if nme is None or failure_rate is None:
        return ""
    return f"NME {nme:.2f}%  >{FAILURE_NME:g}%: {failure_rate:.1f}%"


def landmark_scores(
    pred: np.ndarray,
    true: np.ndarray,
    nme_points: tuple[int, int] | None = None,
    sizes: np.ndarray | None = None,
    chunk: int = CHUNK_ROWS,
) -> Scores:
    """MSE, NME and failure rate of predictions (N, K, 2) against the truth, in one pass over row chunks.

    Args:
        sizes: as for ``nme_per_face``.
    """
    _check_shapes(pred, true)
    sizes = face_sizes(true, nme_points, chunk=chunk) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (len(true),):
        raise ValueError(f"{sizes.shape} face sizes for {len(true)} faces")
    sse, per_face = 0.0, np.empty(len(true), dtype=np.float64)
    for rows in _chunks(len(true), chunk):
        squared = np.square(_read(pred, rows) - _read(true, rows))
        sse += float(squared.sum())
        per_face[rows] = np.sqrt(squared.sum(axis=-1)).mean(axis=-1)
    per_face *= 100.0 / sizes
    values = int(np.prod(true.shape))
    return Scores(sse / values if values else float("nan"), *nme_summary(per_face))
