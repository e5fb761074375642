"""Validate a whole competition folder and summarise it."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.competition import Competition
from kit.data.flip import derive_flip_permutation, load_permutation, save_permutation
from kit.data.images import load_image, read_image_size
from kit.errors import DataError


@dataclass
class CheckSummary:
    root: Path
    n_train: int
    n_test: int
    n_points: int
    n_requested: int
    min_size: tuple[int, int]  # (height, width) of the smallest image by area
    max_size: tuple[int, int]
    points_outside: float  # fraction of training points outside their image
    flip_derived: bool
    flip_matches_private: bool | None  # None when the folder has no private permutation

    def lines(self) -> list[str]:
        flip = "derived" if self.flip_derived else "not derived"
        if self.flip_matches_private is not None:
            flip += ", matches private/flip_permutation.txt" if self.flip_matches_private else ", DIFFERS from private"
        return [
            f"competition  {self.root}",
            f"train        {self.n_train} images, {self.n_points} points each "
            f"({100 * self.points_outside:.2f}% of points outside the image)",
            f"test         {self.n_test} images, {self.n_requested} requested points each",
            f"image sizes  {self.min_size[0]}x{self.min_size[1]} to {self.max_size[0]}x{self.max_size[1]} (HxW)",
            f"flip         {flip}",
        ]


def _image_sizes(paths: list[Path], decode: bool, progress: Callable[[int], None] | None) -> np.ndarray:
    reader = (lambda p: load_image(p).shape[:2]) if decode else read_image_size
    workers = min(8, os.cpu_count() or 1)
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    with ThreadPoolExecutor(workers) as pool:  # cv2 decoding releases the GIL
        for i, size in enumerate(pool.map(reader, paths, chunksize=64)):
            sizes[i] = size
            if progress:
                progress(1)
    return sizes


def check_competition(
    root: str | Path, decode: bool = True, progress: Callable[[int], None] | None = None
) -> CheckSummary:
    """Validate every table and image of a competition folder, derive and store the flip permutation.

    Raises:
        DataError: the first problem found, naming the file and row.
    """
    comp = Competition.load(root)
    train, test = comp.train, comp.test
    train_sizes = _image_sizes(comp.train_paths(), decode, progress)
    test_sizes = _image_sizes(comp.test_paths(), decode, progress)
    overlap = set(train.file_names) & set(test.file_names)
    if overlap:
        raise DataError(f"{comp.test_csv}: file_name '{sorted(overlap)[0]}' is also in {comp.train_csv}")

    points = np.asarray(train.points)
    h, w = train_sizes[:, 0, None], train_sizes[:, 1, None]
    outside = (points[..., 0] < 0) | (points[..., 0] > w - 1) | (points[..., 1] < 0) | (points[..., 1] > h - 1)

    perm = derive_flip_permutation(points)
    save_permutation(comp.flip_file, perm)
    private_flip = comp.root / "private" / "flip_permutation.txt"
    matches = None
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
        flip_derived=True,
        flip_matches_private=matches,
    )
