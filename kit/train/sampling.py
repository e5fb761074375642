"""Every random stream of training as a pure function of (seed, epoch, step): resume continues them exactly.

The data order of an epoch, each sample's augmentation, the device augmentation of each batch and the torch
generator (dropout) are all derived from seeds, so a fold stopped at any step boundary and resumed draws exactly
what an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

ORDER, SAMPLES, BATCH, TORCH, EXTRA = 0, 1, 2, 3, 4  # which stream a seed is for


def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    high, low = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(high) << 31) ^ int(low)


class EpochSampler(Sampler):
    """The training order of one fold, sharded over DDP ranks: yields ``(dataset index, augmentation seed)``.

    The order of epoch ``e`` is a permutation drawn from ``(seed, e)``; each position gets its own augmentation
    seed. ``set_epoch(e, skip)`` starts the epoch ``skip`` samples in (a resumed epoch). With ``extra`` rows after
    the ``n`` first ones (pseudo-labelled images), each epoch also draws ``extra_per_epoch`` of them at random.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, extra: int = 0, extra_per_epoch: int = 0):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.extra, self.extra_per_epoch = extra, min(extra_per_epoch, extra)
        self.epoch, self.skip = 0, 0

    @property
    def per_epoch(self) -> int:
        return self.n + self.extra_per_epoch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _shard(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(self.n)
        if self.extra_per_epoch:
            drawn = np.random.default_rng(stream_seed(self.seed, self.epoch, EXTRA)).choice(
                self.extra, self.extra_per_epoch, replace=False
            )
            rows = np.concatenate([rows, self.n + np.sort(drawn)])
        order = rows[np.random.default_rng(stream_seed(self.seed, self.epoch, ORDER)).permutation(len(rows))]
        per_rank = -(-self.per_epoch // self.world_size)
        order = np.resize(order, per_rank * self.world_size)  # pad by repeating, like DistributedSampler
        seeds = np.random.default_rng(stream_seed(self.seed, self.epoch, SAMPLES)).integers(0, 2**62, len(order))
        shard = slice(self.rank, None, self.world_size)
        return order[shard], seeds[shard]

    def __len__(self) -> int:
        return -(-self.per_epoch // self.world_size) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._shard()
        return iter(zip(order[self.skip :].tolist(), seeds[self.skip :].tolist(), strict=True))
