"""The training batch transform on the device, for both augmentation paths: geometry, photometric, normalise.

``make_batch_transform`` is the one factory the training loop calls. With ``geometry_on_device`` (``augment.gpu``,
the fast path for CUDA) whole uint8 batches of padded cache crops are warped here: one ``grid_sample`` per batch,
flip folded into the matrix, points moved by the same matrices. Without it the DataLoader workers already did the
geometry with albumentations (``kit.data.augment``) and only the photometric step and normalisation run here. The
photometric step (``kit.data.photometric``) is the same function in both paths, and the device geometry samples
exactly the distribution of albumentations' ``Affine`` as ``build_geometry`` configures it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kit.config import AugmentConfig
from kit.data.photometric import photometric
from kit.data.tensors import mirror_points, normalise, to_unit_float


def sample_geometry(batch: int, cfg: AugmentConfig, size: int, generator: torch.Generator):
    """Per-image zoom (B,), rotation in degrees (B,) and shift in pixels (B, 2), on the generator's device.

    The distribution of albumentations' ``Affine(scale=(1 -+ s), keep_ratio=True, rotate=(-+ r),
    translate_percent=...)``: zoom and angle uniform, shift ``int(U(-+ shift x size))`` per axis (albumentations
    truncates the translation to whole pixels).
    """
    u = torch.rand(batch, 4, generator=generator, device=generator.device) * 2 - 1
    return 1 + cfg.scale * u[:, 0], cfg.rotate * u[:, 1], torch.trunc(cfg.shift * size * u[:, 2:])


def affine_matrices(
    scale: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor, size: int, side: int
) -> torch.Tensor:
    """(B, 2, 3) matrices from ``side``-pixel cache-crop pixels to ``size``-pixel model-input pixels.

    albumentations' convention: zoom and rotation about the crop centre ``(side - 1) / 2`` (pixel centres at
    integers), a positive angle turns the image counter-clockwise on screen (y down), then the shift, then the exact
    centre crop to ``size``.
    """
    angle = torch.deg2rad(degrees)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    linear = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    c_in, c_out = (side - 1) / 2, (size - 1) / 2
    offset = c_out + shift - c_in * linear.sum(-1)  # p_out = linear (p - c_in) + c_out + shift
    return torch.cat([linear, offset[..., None]], dim=-1)


def mirror_matrices(matrices: torch.Tensor, width: int, rows: torch.Tensor) -> torch.Tensor:
    """Compose x -> (width - 1) - x after the (B, 2, 3) matrices on the rows of the (B,) bool mask ``rows``."""
    sign = 1 - 2 * rows.to(matrices.dtype)
    x_row = matrices[:, 0] * sign[:, None]
    x_row = torch.cat([x_row[:, :2], x_row[:, 2:] + rows.to(matrices.dtype)[:, None] * (width - 1)], -1)
    return torch.stack([x_row, matrices[:, 1]], 1)


def invert_affines(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of (B, 2, 3) affine matrices, in closed form (``torch.linalg.inv`` checks for errors: a host sync)."""
    a, b, c, d = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1]
    det = a * d - b * c
    linear = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[:, None, None]
    offset = -(linear @ matrices[:, :, 2:])
    return torch.cat([linear, offset], -1)


def move_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply (B, 2, 3) matrices to (B, P, 2) points."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, :, 2].unsqueeze(1)


def warp_batch(images: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Warp float (B, C, S, S) images by pixel matrices (B, 2, 3) to (B, C, size, size): bilinear, zero border."""
    side = images.shape[-1]
    inverse = invert_affines(matrices.float())
    # theta maps normalised output coordinates ((2p + 1) / k - 1, align_corners=False) to normalised input ones.
    linear = inverse[:, :, :2] * (size / side)
    offset = (2 / side) * (inverse[:, :, :2].sum(-1) * ((size - 1) / 2) + inverse[:, :, 2]) + (1 / side - 1)
    theta = torch.cat([linear, offset[..., None]], -1)
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_geometry(
    images: torch.Tensor,
    points: torch.Tensor,
    cfg: AugmentConfig,
    size: int,
    flip_perm: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom, rotation, shift and flip of float (B, C, S, S) padded cache crops and their (B, P, 2)
    cache-pixel points, on the generator's device; returns (B, C, size, size) crops and model-input points.

    Images are mirrored with probability ``cfg.hflip`` (never without ``flip_perm``), swapping point identities.
    """
    batch, side = images.shape[0], images.shape[-1]
    matrices = affine_matrices(*sample_geometry(batch, cfg, size, generator), size=size, side=side)
    moved = move_points(points.float(), matrices)
    if flip_perm is None:
        return warp_batch(images, matrices, size), moved
    flips = torch.rand(batch, generator=generator, device=generator.device) < cfg.hflip
    warped = warp_batch(images, mirror_matrices(matrices, size, flips), size)
    return warped, mirror_points(moved, size, flip_perm, flips)


def make_batch_transform(
    cfg: AugmentConfig,
    size: int,
    mean,
    std,
    channels_last: bool,
    flip_perm: np.ndarray | None,
    device: torch.device,
    seed: int,
    geometry_on_device: bool,
) -> BatchTransform:
    """The training ``batch_transform(images, points) -> (model input, target points)`` of both paths.

    Args:
        cfg: the pipeline's augmentation.
        size: model input side, pixels.
        mean, std: the model's input normalisation (per channel, [0, 1] scale).
        channels_last: return the input in channels_last memory format.
        flip_perm: the left/right point permutation; needed when ``geometry_on_device`` and ``cfg.hflip > 0``.
        device: where the batches are and the work runs; the random draws come from a ``torch.Generator`` there.
        seed: seed of that generator.
        geometry_on_device: True: batches are uint8 (B, S, S, 3) padded cache crops with cache-pixel points
            (``RawCropBatches``), augmented here in geometry, flip and photometrics. False: they are uint8
            (B, size, size, 3) crops already moved and flipped by ``CropDataset``, with model-input points; only
            the photometric step runs here.

    Returns:
        A function of (uint8 images, (B, P, 2) float points), both on ``device``, returning normalised float
        (B, 3, size, size) images and (B, P, 2) points in model-input pixels. It draws all randomness on the device:
        no host sync on CUDA.

    Raises:
        ValueError: ``cfg.hflip > 0`` with geometry on the device but no flip permutation.
    """
    return BatchTransform(cfg, size, mean, std, channels_last, flip_perm, device, seed, geometry_on_device)


class BatchTransform:
    """The callable ``make_batch_transform`` returns; ``reseed(seed)`` restarts its random stream (exact resume)."""

    def __init__(
        self,
        cfg: AugmentConfig,
        size: int,
        mean,
        std,
        channels_last: bool,
        flip_perm: np.ndarray | None,
        device: torch.device,
        seed: int,
        geometry_on_device: bool,
    ):
        self.cfg, self.size, self.mean, self.std, self.channels_last = cfg, size, mean, std, channels_last
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.perm = (
            None if flip_perm is None else torch.as_tensor(np.asarray(flip_perm), dtype=torch.long, device=self.device)
        )
        self.geometry_on_device = geometry_on_device
        if geometry_on_device and cfg.hflip > 0 and self.perm is None:
            raise ValueError("horizontal flip needs the flip permutation")

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)  # host-side: no device sync

    def __call__(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, size = self.cfg, self.size
        x = to_unit_float(images, self.device)
        points = points.to(self.device, torch.float32, non_blocking=True)
        if self.geometry_on_device:
            x, points = augment_geometry(x, points, cfg, size, self.perm if cfg.hflip > 0 else None, self.generator)
        elif x.shape[-2:] != (size, size):
            raise ValueError(f"expected {size} x {size} crops from the DataLoader, got {tuple(x.shape[-2:])}")
        return normalise(photometric(x, cfg, self.generator), self.mean, self.std, self.channels_last), points
