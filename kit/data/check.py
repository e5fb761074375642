"""Validate a whole competition folder and summarise it."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.competition import FLIP_FILE, Competition
from kit.data.flip import derive_flip_permutation, load_permutation, save_permutation
from kit.data.images import load_image, read_image_size
from kit.errors import DataError


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
            f"train        {self.n_train} images, {self.n_points} points each "
            f"({100 * self.points_outside:.2f}% of points outside the image)",
            f"test         {self.n_test} images, {self.n_requested} requested points each",
            f"image sizes  {self.min_size[0]}x{self.min_size[1]} to {self.max_size[0]}x{self.max_size[1]} (HxW)",
            f"flip         {flip}",
        ]
        if self.has_private_answers:
            lines.append("private      test answers present (kit score works)")
        return lines


def _image_sizes(paths: list[Path], decode: bool, progress: Callable[[int], None] | None) -> np.ndarray:
    reader = (lambda p: load_image(p).shape[:2]) if decode else read_image_size
    workers = min(8, os.cpu_count() or 1)
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    with ThreadPoolExecutor(workers) as pool:  # cv2 decoding releases the GIL
        for i, size in enumerate(pool.map(reader, paths)):
            sizes[i] = size
            if progress:
                progress(1)
    return sizes


def check_competition(
    root: str | Path | Competition, decode: bool = True, progress: Callable[[int], None] | None = None
) -> CheckSummary:
    """Validate every table and image of a competition folder, derive and store the flip permutation.

    A layout that is not mirror-symmetric is not an error: the summary says no permutation was derived (and
    any stale ``flip_permutation.txt`` is removed).

    Args:
        root: the competition folder, or an already loaded ``Competition``.
        decode: decode every image (catches corrupt files) instead of reading headers only.
        progress: called with 1 after each image.

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
    train_sizes = _image_sizes(comp.train_paths(), decode, progress)
    test_sizes = _image_sizes(comp.test_paths(), decode, progress)

    points = np.asarray(train.points)
    h, w = train_sizes[:, 0, None], train_sizes[:, 1, None]
    outside = (points[..., 0] < 0) | (points[..., 0] > w - 1) | (points[..., 1] < 0) | (points[..., 1] > h - 1)

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

    sizes = np.concatenate([train_sizes, test_sizes])
    area = sizes[:, 0] * sizes[:, 1]
    return CheckSummary(
        root=comp.root,
        n_train=len(train),
        n_test=len(test),
        n_points=comp.n_points,
        n_requested=test.indices.shape[1],
        min_size=tuple(int(v) for v in sizes[area.argmin()]),
        max_size=tuple(int(v) for v in sizes[area.argmax()]),
        points_outside=float(outside.mean()),
        flip_derived=derived,
        flip_note=note,
        flip_matches_private=matches,
        has_private_answers=has_private,
    )
