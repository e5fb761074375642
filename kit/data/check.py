"""Validate a whole competition folder and summarise it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kit.data.competition import FLIP_FILE, Competition
from kit.data.flip import derive_flip_permutation, load_permutation, save_permutation
from kit.data.images import load_image, max_image_pixels, read_image_size
from kit.errors import DataError
from kit.io import row_chunks

_POOL_MIN_IMAGES = 4000  # fewer images decode faster here than worker processes start (about 0.5 s)
_POOL_CHUNK = 64  # images per worker-process task
_BATCH = 4096  # images handed to the pool at once: its queue and the paths stay this small
_WORST_ROWS = 5  # rows named in the summary


@dataclass
class CheckSummary:
    """What ``check_competition`` found in a valid competition folder."""

    root: Path
    n_train: int
    n_test: int
    n_points: int
    n_requested: int
    min_size: tuple[int, int]  # (height, width) of the smallest image by area
    max_size: tuple[int, int]
    points_outside: float  # fraction of training points outside their image
    n_points_outside: int  # training points outside their image
    n_rows_outside: int  # training rows with at least one point outside
    worst_rows: tuple[tuple[str, int, float], ...]  # (file name, points outside, farthest in px), farthest first
    flip_derived: bool
    flip_note: str  # where the permutation was stored, or why none was derived
    flip_matches_private: bool | None  # None when the folder has no private permutation
    has_private_answers: bool
    decoded: bool = False  # every image was decoded (else only their headers were read)

    def lines(self) -> list[str]:
        flip = f"derived, {self.flip_note}" if self.flip_derived else f"not derived: {self.flip_note}"
        if self.flip_matches_private is not None:
            flip += "; matches private/flip_permutation.txt" if self.flip_matches_private else "; DIFFERS from private"
        lines = [
            f"competition  {self.root}",
            f"train        {self.n_train} images, {self.n_points} points each",
            f"outside      {self._outside()}",
            f"test         {self.n_test} images, {self.n_requested} requested points each",
            f"images       {self._images()}",
            f"image sizes  {self.min_size[0]}x{self.min_size[1]} to {self.max_size[0]}x{self.max_size[1]} (HxW)",
            f"flip         {flip}",
        ]
        if self.has_private_answers:
            lines.append("private      test answers present (kit score works)")
        return lines

    def _images(self) -> str:
        total = self.n_train + self.n_test
        if self.decoded:
            return f"all {total} decoded"
        return f"{total} headers read; pass --decode to decode every image (corrupt image data is found then)"

    def _outside(self) -> str:
        total = self.n_train * self.n_points
        if not self.n_points_outside:
            return f"none of the {total} training points is outside its image"
        worst = ", ".join(
            f"{name} ({count} point{'s' if count > 1 else ''}, up to {far:.0f} px out)"
            for name, count, far in self.worst_rows
        )
        return (
            f"{self.n_points_outside} of {total} training points ({100 * self.points_outside:.2f}%) in "
            f"{self.n_rows_outside} of {self.n_train} rows are outside their image; worst rows: {worst}"
        )


def _decoded_size(path: Path, max_pixels: int) -> tuple[int, int]:
    return load_image(path, max_pixels=max_pixels, strict=True).shape[:2]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the pool


def _fill(sizes: np.ndarray, results: Iterable[tuple[int, int]], progress: Callable[[int], None] | None) -> None:
    for i, size in enumerate(results):
        sizes[i] = size
        if progress:
            progress(1)


def _batches(folder: Path, names: np.ndarray) -> Iterator[tuple[slice, list[Path]]]:
    for start in range(0, len(names), _BATCH):
        rows = slice(start, min(len(names), start + _BATCH))
        yield rows, [folder / name for name in names[rows]]


@contextlib.contextmanager
def _pool(n_images: int, decode: bool) -> Iterator[tuple[Executor | None, dict]]:
    """The executor that reads the sizes (None: this process decodes) and the keywords of its ``map``."""
    if not decode:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            yield pool, {}
    elif n_images < _POOL_MIN_IMAGES or (os.cpu_count() or 1) < 2:
        yield None, {}
    else:
        # A strict decode captures its process's stderr, so each worker process decodes one image at a time.
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        pool = ProcessPoolExecutor(min(16, os.cpu_count() or 1), mp_context=context, initializer=_ignore_sigint)
        try:
            yield pool, {"chunksize": _POOL_CHUNK}
        finally:
            pool.shutdown(cancel_futures=True)


def _image_sizes(
    tables: list[tuple[Path, np.ndarray]], decode: bool, max_pixels: int, progress: Callable[[int], None] | None
) -> np.ndarray:
    """(N, 2) (height, width) of every image of the (folder, file names) tables, from headers or (``decode``) by
    strict decoding."""
    sizes = np.empty((sum(len(names) for _, names in tables), 2), dtype=np.int64)
    read = partial(_decoded_size if decode else read_image_size, max_pixels=max_pixels)
    offset = 0
    with _pool(len(sizes), decode) as (pool, options):
        for folder, names in tables:
            for rows, paths in _batches(folder, names):
                results = pool.map(read, paths, **options) if pool is not None else map(read, paths)
                _fill(sizes[offset + rows.start : offset + rows.stop], results, progress)
            offset += len(names)
    return sizes


def _points_outside(points: np.ndarray, sizes: np.ndarray, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many points lie outside the (height, width) image, and how far the farthest is (px).

    Reads ``points`` (N, P, 2) in row chunks of ``chunk`` rows (default: about 32 MB), so memory-mapped labels of any
    size are fine.
    """
    counts, farthest = np.empty(len(points), dtype=np.int64), np.empty(len(points), dtype=np.float64)
    for rows, block in row_chunks(points, chunk):
        # In the labels' own float32: a float32 difference has the sign of the exact one, and is 2x faster.
        last_y, last_x = (sizes[rows, :, None] - 1).astype(block.dtype).transpose(1, 0, 2)
        x, y = block[..., 0], block[..., 1]
        distance = np.maximum(np.maximum(-x, x - last_x), np.maximum(-y, y - last_y))
        counts[rows] = (distance > 0).sum(axis=1)
        farthest[rows] = distance.max(axis=1, initial=0.0)
    return counts, farthest


def check_competition(
    root: str | Path | Competition,
    decode: bool = False,
    progress: Callable[[int], None] | None = None,
    max_pixels: int | None = None,
) -> CheckSummary:
    """Validate every table and image of a competition folder, derive and store the flip permutation.

    A layout that is not mirror-symmetric is not an error: the summary says no permutation was derived (and
    any stale ``flip_permutation.txt`` is removed).

    Args:
        root: the competition folder, or an already loaded ``Competition``.
        decode: decode every image instead of reading headers only: catches corrupt files, including JPEGs
            whose damaged data the decoder would repair with only a warning. Slow at full size; the crop cache
            build (``kit prepare``, fold-train) decodes strictly anyway.
        progress: called with 1 after each image.
        max_pixels: the largest image accepted (width x height), checked on the header before any decode;
            default ``kit.data.images.max_image_pixels()``.

    Raises:
        DataError: the first problem found, naming the file and row.
    """
    comp = root if isinstance(root, Competition) else Competition.load(root)
    train, test = comp.train, comp.test
    overlap = set(train.file_names) & set(test.file_names)
    if overlap:
        raise DataError(f"{comp.test_csv}: file_name '{sorted(overlap)[0]}' is also in {comp.train_csv}")
    has_private = comp.private_csv.is_file()
    if has_private:
        comp.private_answers()
    max_pixels = max_image_pixels() if max_pixels is None else max_pixels
    tables = [(comp.train_image_dir, train.file_names), (comp.test_image_dir, test.file_names)]
    sizes = _image_sizes(tables, decode, max_pixels, progress)
    counts, farthest = _points_outside(train.points, sizes[: len(train)])
    worst = np.lexsort((-counts, -farthest))[: min(_WORST_ROWS, int((counts > 0).sum()))]

    matches = None
    try:
        perm = derive_flip_permutation(train.points)
    except DataError as exc:
        (comp.workspace / FLIP_FILE).unlink(missing_ok=True)
        derived, note = False, str(exc)
    else:
        save_permutation(comp.workspace / FLIP_FILE, perm)
        derived, note = True, f"stored in {comp.workspace / FLIP_FILE}"
        private_flip = comp.root / "private" / "flip_permutation.txt"
        if private_flip.is_file():
            matches = bool(np.array_equal(perm, load_permutation(private_flip, comp.n_points)))

    area = sizes[:, 0] * sizes[:, 1]
    return CheckSummary(
        root=comp.root,
        n_train=len(train),
        n_test=len(test),
        n_points=comp.n_points,
        n_requested=test.indices.shape[1],
        min_size=tuple(int(v) for v in sizes[area.argmin()]),
        max_size=tuple(int(v) for v in sizes[area.argmax()]),
        points_outside=float(counts.sum() / (len(train) * comp.n_points)),
        n_points_outside=int(counts.sum()),
        n_rows_outside=int((counts > 0).sum()),
        worst_rows=tuple((str(train.file_names[i]), int(counts[i]), float(farthest[i])) for i in worst),
        flip_derived=derived,
        flip_note=note,
        flip_matches_private=matches,
        has_private_answers=has_private,
        decoded=decode,
    )
