"""Prediction with optional flip TTA, in model-input pixels and mapped back to original-image pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from kit.data.dataset import CropDataset
from kit.data.geometry import apply_affine, invert_affine
from kit.data.prepare import CropCache
from kit.data.tensors import autocast, mirror_points, prepare_input


def inference_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> DataLoader:
    """In-order batches of an un-augmented dataset (pinned on CUDA)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


@torch.no_grad()
def _batches(model, loader, device: torch.device, amp: bool, channels_last: bool, flip_perm) -> Iterator[np.ndarray]:
    """Coordinates (B, P, 2) float32 in model-input pixels of each batch of ``loader``, in order."""
    model.eval()
    perm = None if flip_perm is None else torch.as_tensor(flip_perm, device=device)
    for x, _, _ in loader:
        x = prepare_input(x, model, device, channels_last)
        with autocast(device, amp):
            points = model.decode(model(x)).float()
            if perm is not None:
                mirrored = model.decode(model(torch.flip(x, dims=[3]))).float()
                points = (points + mirror_points(mirrored, x.shape[-1], perm)) / 2
        yield points.cpu().numpy()


def predict_points(
    model,
    loader,
    device: torch.device,
    amp: bool = True,
    channels_last: bool = True,
    flip_perm: np.ndarray | None = None,
) -> np.ndarray:
    """Coordinates (N, P, 2) in model-input pixels, in loader order; with ``flip_perm``, mirrored TTA averaged in.

    The float32 output is allocated once and filled batch by batch.
    """
    out = np.empty((len(loader.dataset), model.n_points, 2), np.float32)
    start = 0
    for points in _batches(model, loader, device, amp, channels_last, flip_perm):
        out[start : start + len(points)] = points
        start += len(points)
    return out[:start]


def predict_original(
    model,
    cache: CropCache,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int,
    amp: bool = True,
    channels_last: bool = True,
    flip_perm: np.ndarray | None = None,
    num_workers: int = 0,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Original-pixel predictions (len(rows), P, 2) float32 for ``rows`` of ``cache``; ``advance(n)`` after each
    batch of n images.

    Each batch is mapped to original pixels (``CropCache.to_original``) as it comes, into an output allocated once:
    memory stays at the output and a batch.
    """
    loader = inference_loader(CropDataset(cache, rows), batch_size, device, num_workers)
    inverse = invert_affine(cache.transforms()[rows])
    out = np.empty((len(rows), model.n_points, 2), np.float32)
    start = 0
    for points in _batches(model, loader, device, amp, channels_last, flip_perm):
        stop = start + len(points)
        out[start:stop] = apply_affine(points.astype(np.float64) + cache.pad, inverse[start:stop])
        start = stop
        if advance is not None:
            advance(len(points))
    return out[:start]
