"""A cache of face crops at training size: uint8, memory-mapped, with the transform that undoes each crop.

Training reads this instead of decoding JPEGs every epoch (at 128 px a GPU trains faster than 16 cores decode).
Each crop is the model input's crop (``kit.data.geometry.crop_transform``) plus ``pad`` pixels of border on every
side, so that augmentation can rotate and shift without cutting points; an exact integer centre crop of
``size`` x ``size`` is the un-augmented model input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.competition import Competition
from kit.data.geometry import apply_affine, crop_transform, invert_affine, warp_image
from kit.data.images import load_image

CACHE_VERSION = 1


@dataclass(frozen=True)
class CropCache:
    """Crops of one split (``train`` or ``test``): ``images`` (N, S, S, 3) uint8 and ``transforms`` (N, 2, 3)."""

    path: Path
    size: int  # model input size
    pad: int  # border kept on each side: the cache side is size + 2 x pad

    @property
    def side(self) -> int:
        return self.size + 2 * self.pad

    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    def transforms(self) -> np.ndarray:
        """(N, 2, 3) affine matrices from original pixels to cache-crop pixels."""
        return np.load(self.path / "transforms.npy")

    def to_cache(self, points: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Original pixels (N, P, 2) of rows ``rows`` (default: all) -> cache-crop pixels."""
        transforms = self.transforms() if rows is None else self.transforms()[rows]
        return apply_affine(points, transforms).astype(np.float32)

    def to_original(self, points: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Model-input pixels (N, P, 2) of the centre crop -> original-image pixels."""
        transforms = self.transforms() if rows is None else self.transforms()[rows]
        return apply_affine(np.asarray(points, np.float64) + self.pad, invert_affine(transforms)).astype(np.float32)


def _key(comp: Competition, split: str, size: int, margin: float, pad: int) -> str:
    table = comp.train_csv if split == "train" else comp.test_csv
    stat = table.stat()
    ident = f"v{CACHE_VERSION}|{split}|{size}|{margin}|{pad}|{table.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def crop_cache_path(comp: Competition, split: str, size: int, margin: float, pad: int) -> Path:
    return comp.root / ".kit_cache" / f"crops-{split}-{size}-m{margin:g}-p{pad}-{_key(comp, split, size, margin, pad)}"


def prepare_crops(
    data_dir: str | Path,
    split: str,
    size: int,
    margin: float = 0.0,
    pad: int = 16,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> CropCache:
    """Build (or reuse) the crop cache of a split; written to a temporary folder and renamed when complete."""
    comp = Competition.load(data_dir)
    path = crop_cache_path(comp, split, size, margin, pad)
    cache = CropCache(path=path, size=size, pad=pad)
    if (path / "meta.json").is_file():
        return cache
    paths = comp.train_paths() if split == "train" else comp.test_paths()
    side = size + 2 * pad
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
    transforms = np.empty((len(paths), 2, 3), dtype=np.float64)

    def crop(i: int) -> None:
        image = load_image(paths[i])
        h, w = image.shape[:2]
        # The input crop's matrix, shifted by `pad` and enlarged: same scale, so centre-cropping is exact.
        matrix = crop_transform(h, w, size, margin)
        matrix[:, 2] += pad
        images[i] = warp_image(image, matrix, side)
        transforms[i] = matrix

    try:
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
            for _ in pool.map(crop, range(len(paths))):
                if progress:
                    progress(1)
        images.flush()
        np.save(tmp / "transforms.npy", transforms)
        meta = {"split": split, "size": size, "margin": margin, "pad": pad, "n": len(paths), "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache
