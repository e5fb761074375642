"""Torch datasets over the crop cache: uint8 images (photometric augmentation and normalisation come later, on
the device, in ``kit.data.gpu_augment.make_batch_transform``) and points."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.config import AugmentConfig
from kit.data.augment import build_geometry, center_crop, hflip
from kit.data.geometry import apply_affine
from kit.data.prepare import CropCache
from kit.io import ScatteredReads, chunk_rows


class CachePoints:
    """The labels of ``rows`` in cache-crop pixels (``CropCache.to_cache``), converted when read.

    The labels stay where they are (memory-mapped, as large as the competition's): no converted copy is held, in
    this process or in any loader worker.
    """

    def __init__(self, cache: CropCache, labels: np.ndarray, rows: np.ndarray):
        self.labels, self.rows = ScatteredReads(labels), rows
        self.transforms = cache.transforms()[rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        """(P, 2) float32 points of ``rows[index]``, or (n, P, 2) for an array of indices."""
        return apply_affine(self.labels[self.rows[index]], self.transforms[index]).astype(np.float32)

    def mean(self) -> np.ndarray:
        """(P, 2) float32 mean over the rows, read in chunks: bit for bit the ``mean(axis=0)`` of all of them."""
        total = None
        step = chunk_rows(self.labels.array)
        for start in range(0, len(self), step):
            block = self[np.arange(start, min(len(self), start + step))]
            # Carried as the first row, the total continues numpy's row-by-row float32 sum over axis 0.
            total = np.add.reduce(block if total is None else np.concatenate([total[None], block]), axis=0)
        return np.true_divide(total, np.intp(len(self)), out=total, casting="unsafe")  # as np.mean divides


class CropDataset(Dataset):
    """Rows ``rows`` of a crop cache. Yields ``(image uint8 (S, S, 3), points (P, 2) float32, row)``.

    Points are in model-input pixels; for test data (no points) a zero array is returned. With ``augment`` set,
    the geometry is randomised (zoom, rotation, shift: ``build_geometry``) and images are mirrored with probability
    ``augment.hflip``, swapping point identities through ``flip_perm``; the photometric part of ``augment`` is left
    to the batch transform on the device (``make_batch_transform(..., geometry_on_device=False)``).
    """

    def __init__(
        self,
        cache: CropCache,
        rows: np.ndarray,
        points: np.ndarray | None = None,
        augment: AugmentConfig | None = None,
        flip_perm: np.ndarray | None = None,
        seed: int = 0,
    ):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.points = None if points is None else CachePoints(cache, points, self.rows)
        self.augment_cfg = augment
        self.flip_perm = flip_perm
        self.seed = seed
        self._crops = None  # the memory-mapped crops, opened lazily, once per worker process
        self._augment = build_geometry(augment, cache.size, cache.side) if augment is not None else None
        if augment is not None and augment.hflip > 0 and flip_perm is None:
            raise ValueError("horizontal flip needs the flip permutation")
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Seed the geometry and flips (per sample, from the sampler's seed: ``kit.train.sampling``)."""
        self._rng = np.random.default_rng(seed)
        if self._augment is not None:
            self._augment.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]):
        """``key`` is an index, or ``(index, seed)``: the sample's augmentation is then drawn from ``seed``."""
        if isinstance(key, tuple):
            key, seed = key
            self.reseed(seed)
        index = key
        if self._crops is None:
            self._crops = ScatteredReads(self.cache.images())
        image = self._crops[self.rows[index]]
        points = self.points[index] if self.points is not None else np.zeros((0, 2), np.float32)
        if self._augment is None:
            image, points = center_crop(image, points, self.cache.size, self.cache.pad)
            image = np.ascontiguousarray(image)
        else:
            out = self._augment(image=image, keypoints=points)
            image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2)
            if self.augment_cfg.hflip and self._rng.random() < self.augment_cfg.hflip:
                image, points = hflip(image, points, self.flip_perm)
        return torch.from_numpy(image), torch.from_numpy(np.asarray(points, dtype=np.float32)), self.rows[index]


class RawCropBatches(Dataset):
    """Whole batches of padded cache crops and cache-pixel points, for augmentation on the device.

    DataLoader calls ``__getitems__`` with a batch of indices: one sorted fancy-index read of the memory map per
    batch instead of one read per image.
    """

    def __init__(self, cache: CropCache, rows: np.ndarray, points: np.ndarray):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.points = CachePoints(cache, points, self.rows)
        self._crops = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list):
        """``keys`` are indices or ``(index, seed)`` pairs (the seeds are unused: augmentation runs on the device)."""
        indices = [key[0] if isinstance(key, tuple) else key for key in keys]
        if self._crops is None:
            self._crops = ScatteredReads(self.cache.images())
        order = np.sort(np.asarray(indices))
        images = torch.from_numpy(self._crops[self.rows[order]])
        return images, torch.from_numpy(self.points[order]), torch.from_numpy(self.rows[order])

    def __getitem__(self, index: int):
        images, points, rows = self.__getitems__([index])
        return images[0], points[0], rows[0]


def keep_batch(batch):
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a collated batch."""
    return batch


class ConcatCrops(Dataset):
    """Two crop datasets as one (training rows, then pseudo-labelled test rows), for keys that may carry seeds.

    ``torch.utils.data.ConcatDataset`` takes integer indices only, and has no batched ``__getitems__``.
    """

    def __init__(self, first: Dataset, second: Dataset):
        self.first, self.second = first, second
        self.points = first.points  # the training rows' points (the mean-shape start of the model)

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def _route(self, key):
        index = key[0] if isinstance(key, tuple) else key
        if index < len(self.first):
            return self.first, key
        shifted = index - len(self.first)
        return self.second, ((shifted, key[1]) if isinstance(key, tuple) else shifted)

    def __getitem__(self, key):
        dataset, local = self._route(key)
        return dataset[local]

    def __getitems__(self, keys: list):
        if not hasattr(self.first, "__getitems__"):
            return [self[key] for key in keys]
        parts = {}
        for key in keys:
            dataset, local = self._route(key)
            parts.setdefault(id(dataset), (dataset, []))[1].append(local)
        batches = [dataset.__getitems__(local) for dataset, local in parts.values()]
        return tuple(torch.cat([b[i] for b in batches]) for i in range(3))
