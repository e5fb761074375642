"""Augmentation on the device, from the uint8 crop cache: affine + flip + colour + blur + noise + cutout + normalise.

At 128 px a GPU trains resnet34 faster than CPU workers can augment, so the fast path moves whole uint8 batches
to the device and augments there: one ``grid_sample`` per batch for the geometry (flip folded into the same
matrix), with the points moved by exactly the same matrices. No library does batched keypoint-consistent affine
augmentation on the device for a fixed point order, hence the hand-written version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kit.config import AugmentConfig


def random_affines(
    batch: int, cfg: AugmentConfig, size: int, side: int, generator: torch.Generator, flip_mask: torch.Tensor
) -> torch.Tensor:
    """(B, 2, 3) float64 matrices from cache-crop pixels to model-input pixels (pixel centres at integers).

    Zoom, rotation and shift act about the crop centre, like albumentations' Affine followed by a centre crop;
    rows of ``flip_mask`` are mirrored as well.
    """
    u = torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 2 - 1
    scale = 1 + cfg.scale * u[:, 0]
    angle = torch.deg2rad(cfg.rotate * u[:, 1])
    shift = cfg.shift * size * u[:, 2:]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    c_in, c_out = (side - 1) / 2, (size - 1) / 2
    offset = c_out + shift - c_in * linear.sum(-1)  # p_out = linear (p - c_in) + c_out + shift
    matrices = torch.cat([linear, offset[..., None]], dim=-1)
    flip = flip_mask.to(torch.float64).cpu()
    # x -> (size - 1) - x on flipped rows.
    matrices[:, 0] = matrices[:, 0] * (1 - 2 * flip[:, None])
    matrices[:, 0, 2] += flip * (size - 1)
    return matrices


def _pixel_to_normalised(k: int) -> torch.Tensor:
    """3x3 matrix mapping pixel coordinates (centres at integers) of a k-pixel axis to [-1, 1] edge coordinates."""
    return torch.tensor([[2 / k, 0, 1 / k - 1], [0, 2 / k, 1 / k - 1], [0, 0, 1]], dtype=torch.float64)


def warp_batch(images: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Warp float (B, C, S, S) images with pixel matrices (B, 2, 3) to (B, C, size, size), bilinear, zero border."""
    side = images.shape[-1]
    full = torch.cat([matrices, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(len(matrices), 1, 3)], 1)
    # theta maps normalised output coordinates to normalised input coordinates.
    theta = _pixel_to_normalised(side) @ torch.linalg.inv(full) @ torch.linalg.inv(_pixel_to_normalised(size))
    grid = F.affine_grid(theta[:, :2].to(images.device, torch.float32), [len(images), 3, size, size],
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _apply_with_probability(x: torch.Tensor, changed: torch.Tensor, p: float, generator_device: torch.Generator):
    mask = torch.rand(len(x), generator=generator_device, device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), changed, x)


def gpu_augment(
    images: torch.Tensor,
    points: torch.Tensor,
    cfg: AugmentConfig,
    size: int,
    flip_perm: torch.Tensor | None,
    generator: torch.Generator,
    device_generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment uint8 (B, S, S, 3) cache crops and their (B, P, 2) cache-pixel points, both on the device.

    Returns float (B, 3, size, size) images in [0, 1] and points in model-input pixels.
    """
    batch, side = images.shape[0], images.shape[1]
    flip_mask = torch.rand(batch, generator=generator) < cfg.hflip
    if flip_perm is None:
        flip_mask[:] = False
    matrices = random_affines(batch, cfg, size, side, generator, flip_mask)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    x = warp_batch(x, matrices, size)
    m = matrices.to(points.device, torch.float32)
    out_points = points @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)
    if flip_perm is not None and flip_mask.any():
        flipped = flip_mask.to(points.device)
        out_points = torch.where(flipped.view(-1, 1, 1), out_points[:, flip_perm], out_points)

    gen = device_generator
    if cfg.color:
        contrast = 1 + 0.3 * (torch.rand(batch, 1, 1, 1, generator=gen, device=x.device) * 2 - 1)
        brightness = 0.3 * (torch.rand(batch, 1, 1, 1, generator=gen, device=x.device) * 2 - 1)
        tint = 1 + 0.1 * (torch.rand(batch, 3, 1, 1, generator=gen, device=x.device) * 2 - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((x - mean) * contrast + mean + brightness * mean) * tint
        x = _apply_with_probability(x, jittered.clamp_(0, 1), cfg.color, gen)
    if cfg.blur:
        kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        x = _apply_with_probability(x, F.conv2d(x, kernel, padding=1, groups=3), cfg.blur, gen)
    if cfg.noise:
        sigma = 0.02 + 0.06 * torch.rand(batch, 1, 1, 1, generator=gen, device=x.device)
        noisy = (x + sigma * torch.randn(x.shape, generator=gen, device=x.device)).clamp_(0, 1)
        x = _apply_with_probability(x, noisy, cfg.noise, gen)
    if cfg.cutout:
        hw = (0.1 + 0.2 * torch.rand(batch, 2, generator=gen, device=x.device)) * size
        corner = torch.rand(batch, 2, generator=gen, device=x.device) * (size - hw)
        axis = torch.arange(size, device=x.device, dtype=torch.float32)
        inside_y = (axis[None] >= corner[:, :1]) & (axis[None] < corner[:, :1] + hw[:, :1])
        inside_x = (axis[None] >= corner[:, 1:]) & (axis[None] < corner[:, 1:] + hw[:, 1:])
        hole = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
        x = _apply_with_probability(x, x.masked_fill(hole, 0.5), cfg.cutout, gen)
    return x, out_points


def normalise(x: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) -> normalised, in channels_last when asked."""
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()

