"""The runs' rows in chunks, for every pass of ``kit blend`` and ``kit stack`` over the training or test rows.

A chunk holds every run's rows as one array (R, n, Q), run-major (Q = 2P coordinates, point-major: point p's x then
y), so that each run's rows are one contiguous (n, Q) block, and the truth's rows (n, Q) beside it. Both keep the
inputs' own dtype (float32 for run folders): converting to float64 is exact, and is done one small block of rows
at a time (``RowChunk.blocks``), where the block stays in cache for the arithmetic that follows. The rows of a
chunk are grouped by fold as they are read, so that a fold's rows are one slice of the chunk: per-fold sums take
views, never masked copies. The pages of memory-mapped inputs are released as each chunk is read
(``kit.io.release_pages``), so a pass over arrays of any size holds about one chunk in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from kit.io import release_pages, row_chunks

BLOCK_ROWS = 32  # rows converted to float64 and worked on at once: a block of every run stays in cache


@dataclass(frozen=True)
class RowChunk:
    """Consecutive training rows, grouped by fold."""

    rows: np.ndarray  # (n,) the rows' numbers, fold by fold, ascending within a fold
    x: np.ndarray  # (R, n, Q) the runs' coordinates, in the inputs' dtype
    y: np.ndarray  # (n, Q) the truth, in the inputs' dtype
    groups: tuple[tuple[int, slice], ...]  # each fold present in the chunk, and its rows' positions in it

    def blocks(self, rows: slice, size: int | None = None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """``(block, x, y)`` for blocks of at most ``size`` rows of ``rows``: positions, the runs' coordinates
        (R, b, Q) and the truth (b, Q), both float64."""
        size = size or BLOCK_ROWS
        for start in range(rows.start, rows.stop, size):
            block = slice(start, min(rows.stop, start + size))
            yield block, self.x[:, block].astype(np.float64), self.y[block].astype(np.float64)


def read_runs(
    arrays: Sequence[np.ndarray], start: int, stop: int, order: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of R arrays (N, P, 2) as one array (R, n, 2P), in ``order`` if given.

    Args:
        order: a permutation of ``range(stop - start)``: row i of the result is row ``start + order[i]``.
        out: where to write them; default a new array of the arrays' common dtype, which holds every value exactly.
    """
    if out is None:
        out = np.empty((len(arrays), stop - start, 2 * arrays[0].shape[1]), dtype=np.result_type(*arrays))
    for r, array in enumerate(arrays):
        view = array[start:stop]
        if order is None:
            out[r] = view.reshape(stop - start, -1)
        else:  # read the rows in file order, then permute them in memory
            out[r] = np.take(np.array(view).reshape(stop - start, -1), order, axis=0)
        release_pages(view)
    return out


Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]
_progress: ContextVar[Progress | None] = ContextVar("row_pass_progress", default=None)


@contextlib.contextmanager
def report_passes(progress: Progress | None) -> Iterator[None]:
    """Within the block, every pass over the rows (``fold_chunks``, ``run_blocks``) shows a bar made by
    ``progress(total rows, description)``, which yields ``advance(rows)``; None shows nothing."""
    token = _progress.set(progress)
    try:
        yield
    finally:
        _progress.reset(token)


@contextlib.contextmanager
def _pass(total: int, description: str) -> Iterator[Callable[[int], None]]:
    progress = _progress.get()
    if progress is None:
        yield lambda rows: None
        return
    with progress(total, description) as advance:
        yield advance


def fold_chunks(
    predictions: Sequence[np.ndarray],
    truth: np.ndarray,
    folds: np.ndarray,
    rows_per_chunk: int,
    description: str = "OOF rows",
) -> Iterator[RowChunk]:
    """Every training row once, in chunks of ``rows_per_chunk`` consecutive rows, each grouped by fold.

    Each chunk's arrays are overwritten by the next one's. The pass shows progress (``report_passes``) as
    ``description``.

    Args:
        predictions: R arrays (N, P, 2), e.g. memory-mapped OOF predictions.
        truth: (N, P, 2) answers; folds: (N,) fold of each row.
    """
    n, q = len(folds), 2 * truth.shape[1]
    size = min(n, rows_per_chunk)
    # One buffer for every chunk: a fresh one would be paged in again each time.
    x_buffer = np.empty((len(predictions), size, q), dtype=np.result_type(*predictions))
    y_buffer = np.empty((size, q), dtype=truth.dtype)
    with _pass(n, description) as advance:
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            fold = np.asarray(folds[start:stop])
            order = np.argsort(fold, kind="stable")
            present, first = np.unique(fold[order], return_index=True)
            bounds = [*first.tolist(), stop - start]
            groups = tuple((int(f), slice(bounds[i], bounds[i + 1])) for i, f in enumerate(present))
            if (np.diff(fold) >= 0).all():
                order = None  # already grouped: read the rows as they are
            x = read_runs(predictions, start, stop, order, x_buffer[:, : stop - start])
            y = read_runs([truth], start, stop, order, y_buffer[None, : stop - start])[0]
            yield RowChunk(np.arange(start, stop) if order is None else start + order, x, y, groups)
            advance(stop - start)


def run_blocks(
    arrays: Sequence[np.ndarray], rows_per_chunk: int, size: int, description: str = "test rows"
) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, x)`` for every row of R arrays (N, P, 2) in order, ``size`` rows at a time: x (R, b, 2P) float64.

    The arrays are read ``rows_per_chunk`` rows at a time (``read_runs``); the pass shows progress
    (``report_passes``) as ``description``.
    """
    n = len(arrays[0])
    buffer = np.empty((len(arrays), min(n, rows_per_chunk), 2 * arrays[0].shape[1]), dtype=np.result_type(*arrays))
    with _pass(n, description) as advance:
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            x = read_runs(arrays, start, stop, out=buffer[:, : stop - start])
            for first in range(0, x.shape[1], size):
                block = x[:, first : first + size].astype(np.float64)
                yield slice(start + first, start + first + block.shape[1]), block
            advance(stop - start)


def add_products(out: np.ndarray, vectors: Sequence[np.ndarray]) -> None:
    """Add the column sums of ``vectors[i] * vectors[j]`` (each (n, Q)) to ``out[i, j]`` (k, k, Q), for i <= j.

    The lower triangle is left as it is: ``symmetric`` fills it once the sums are complete.
    """
    for i, a in enumerate(vectors):
        for j in range(i, len(vectors)):
            out[i, j] += np.einsum("nq,nq->q", a, vectors[j])


def symmetric(products: np.ndarray) -> np.ndarray:
    """``products`` (..., k, k, Q) with its lower triangle copied from the upper one (``add_products``)."""
    k = products.shape[-2]
    out = products.copy()
    for i in range(k):
        for j in range(i):
            out[..., i, j, :] = products[..., j, i, :]
    return out


def mean_row(array: np.ndarray) -> np.ndarray:
    """The mean (float64) of the rows of ``array`` (N, ...), read in chunks."""
    total = np.zeros(array.shape[1:])
    for _, block in row_chunks(array, dtype=np.float64):
        total += block.sum(axis=0)
    return total / len(array)


def one_blas_thread() -> AbstractContextManager:
    """A context that runs BLAS on one thread. The passes over the rows make many small BLAS calls, which a second
    thread slows down many times over on a two-core machine that has anything else to run (it waits or spins for a
    busy core); the large ones gain little."""
    return threadpool_limits(limits=1, user_api="blas")
