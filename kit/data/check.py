"""Validate a whole competition folder and summarise it."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kit.data.competition import FLIP_FILE, Competition
from kit.data.flip import derive_flip_permutation, load_permutation, save_permutation
from kit.data.images import load_image, max_image_pixels, read_image_size
from kit.errors import DataError

_POOL_MIN_IMAGES = 4000  # fewer images decode faster here than worker processes start (about 0.5 s)
_POOL_CHUNK = 64  # images per worker-process task
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

    def lines(self) -> list[str]:
        flip = f"derived, {self.flip_note}" if self.flip_derived else f"not derived: {self.flip_note}"
        if self.flip_matches_private is not None:
            flip += "; matches private/flip_permutation.txt" if self.flip_matches_private else "; DIFFERS from private"
        lines = [
            f"competition  {self.root}",
            f"train        {self.n_train} images, {self.n_points} points each",
            f"outside      {self._outside()}",
            f"test         {self.n_test} images, {self.n_requested} requested points each",
            f"image sizes  {self.min_size[0]}x{self.min_size[1]} to {self.max_size[0]}x{self.max_size[1]} (HxW)",
            f"flip         {flip}",
        ]
        if self.has_private_answers:
            lines.append("private      test answers present (kit score works)")
        return lines

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


def _image_sizes(
    paths: list[Path], decode: bool, max_pixels: int, progress: Callable[[int], None] | None
) -> np.ndarray:
    """(N, 2) (height, width) of every image, from headers or (``decode``) by strict decoding."""
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    if not decode:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            _fill(sizes, pool.map(partial(read_image_size, max_pixels=max_pixels), paths), progress)
    elif len(paths) < _POOL_MIN_IMAGES or (os.cpu_count() or 1) < 2:
        _fill(sizes, (_decoded_size(path, max_pixels) for path in paths), progress)
    else:
        # A strict decode captures its process's stderr, so each worker process decodes one image at a time.
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        pool = ProcessPoolExecutor(min(16, os.cpu_count() or 1), mp_context=context, initializer=_ignore_sigint)
        try:
            decoded = pool.map(partial(_decoded_size, max_pixels=max_pixels), paths, chunksize=_POOL_CHUNK)
            _fill(sizes, decoded, progress)
        finally:
            pool.shutdown(cancel_futures=True)
    return sizes


def _points_outside(points: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many points lie outside the (height, width) image, and how far the farthest is (px)."""
    h, w = sizes[:, 0, None], sizes[:, 1, None]
    x, y = points[..., 0], points[..., 1]
    distance = np.maximum.reduce([-x, x - (w - 1), -y, y - (h - 1)])
    return (distance > 0).sum(axis=1), distance.max(axis=1, initial=0.0)


def check_competition(
    root: str | Path | Competition,
    decode: bool = True,
    progress: Callable[[int], None] | None = None,
    max_pixels: int | None = None,
) -> CheckSummary:
    """Validate every table and image of a competition folder, derive and store the flip permutation.

    A layout that is not mirror-symmetric is not an error: the summary says no permutation was derived (and
    any stale ``flip_permutation.txt`` is removed).

    Args:
        root: the competition folder, or an already loaded ``Competition``.
        decode: decode every image instead of reading headers only: catches corrupt files, including JPEGs
            whose damaged data the decoder would repair with only a warning.
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
    sizes = _image_sizes([*comp.train_paths(), *comp.test_paths()], decode, max_pixels, progress)
    train_sizes = sizes[: len(train)]

    points = np.asarray(train.points, dtype=np.float64)
    counts, farthest = _points_outside(points, train_sizes)
    worst = np.lexsort((-counts, -farthest))[: min(_WORST_ROWS, int((counts > 0).sum()))]

    matches = None
    try:
        perm = derive_flip_permutation(points)
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
        points_outside=float(counts.sum() / points[..., 0].size),
        n_points_outside=int(counts.sum()),
        n_rows_outside=int((counts > 0).sum()),
        worst_rows=tuple((str(train.file_names[i]), int(counts[i]), float(farthest[i])) for i in worst),
        flip_derived=derived,
        flip_note=note,
        flip_matches_private=matches,
        has_private_answers=has_private,
    )
