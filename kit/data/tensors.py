"""Tensors on the device, shared by augmentation, training and TTA: model inputs from uint8 crops, bf16 autocast,
and the point flip.

The left/right permutation is data (``flip_permutation.txt``): mirroring an image moves the point that was
``perm[i]`` into slot ``i``.
"""

from __future__ import annotations

import contextlib
import functools

import torch


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op on the CPU (CPU bf16 is slower than fp32 on most machines)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=16)
def _statistics(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them every step would copy from the host each time.
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def normalise(x: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) -> normalised, in channels_last when asked."""
    mean_t, std_t = _statistics(tuple(mean), tuple(std), x.device)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_unit_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> float (B, 3, H, W) in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def prepare_input(images: torch.Tensor, model, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on the device; normalising there keeps host work small."""
    return normalise(to_unit_float(images, device), model.mean, model.std, channels_last)


def mirror_points(points: torch.Tensor, width: float, perm: torch.Tensor, rows: torch.Tensor | None = None):
    """Mirror (B, P, 2) pixel points across the vertical axis of a ``width``-pixel image and swap identities.

    Pixel centres are at integers, so x becomes ``width - 1 - x``. With ``rows`` (a (B,) bool mask) only those
    rows are mirrored; the others are returned unchanged. Applying it twice gives back ``points``.
    """
    mirrored = points[:, perm].clone()
    mirrored[..., 0] = (width - 1) - mirrored[..., 0]
    if rows is None:
        return mirrored
    return torch.where(rows.to(points.device).view(-1, 1, 1), mirrored, points)
