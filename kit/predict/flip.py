"""The one torch point-flip helper, shared by flip TTA and augmentation on the device.

The left/right permutation is data (``flip_permutation.txt``): mirroring an image moves the point that was
``perm[i]`` into slot ``i``.
"""

from __future__ import annotations

import torch


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
