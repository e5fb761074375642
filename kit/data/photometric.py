"""Photometric augmentation of float image batches on the device, with one random draw per image.

Both training paths run this on the batch after the geometry (which ran either in DataLoader workers or on the
device), so ``augment.gpu`` moves the geometry but cannot change the photometric distribution. Every op draws its
parameters per image from a ``torch.Generator`` on the images' device and selects images with ``torch.where``:
no host sync, no Python branch on tensor values, no loop over the batch.

The ops follow albumentations' ColorJitter, OneOf(GaussianBlur, MotionBlur), GaussNoise and CoarseDropout
(``fill="random"``) as configured before. Hand-written, because no library fits: albumentations and torchvision
draw one parameter set per call, and kornia (not a dependency) uses the global RNG and indexes the drawn subset
(a host sync).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from kit.config import AugmentConfig

GAUSSIAN_SIZES = (3, 5)  # odd kernel sizes of the Gaussian blur, equally likely
GAUSSIAN_SIGMA = (0.5, 3.0)  # its sigma range, pixels (albumentations' default)
MOTION_SIZES = (3, 5, 7)  # odd kernel sizes of the motion blur, equally likely
KERNEL = max(*GAUSSIAN_SIZES, *MOTION_SIZES)  # every blur kernel lives in a KERNEL x KERNEL window

# RGB -> YIQ: Y is the grey of cv2 (and of albumentations' contrast and saturation), I and Q span the chroma.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@functools.lru_cache(maxsize=8)
def _yiq(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, 3) RGB -> YIQ matrix and its inverse on ``device``, copied there once."""
    forward = torch.tensor(_RGB_TO_YIQ, dtype=torch.float32, device=device)
    return forward, torch.tensor(np.linalg.inv(_RGB_TO_YIQ), dtype=torch.float32, device=device)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Grey (B, H, W) of float (B, 3, H, W) RGB images, with cv2's weights."""
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Float32 U(low, high) of ``shape`` on the generator's device."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def chance(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) bool, each True with probability ``p``."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


def choice(batch: int, values: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """(B,) int64, each one of ``values`` with equal probability."""
    index = (torch.rand(batch, generator=generator, device=generator.device) * len(values)).long()
    out = torch.full_like(index, values[-1])
    for i, value in enumerate(values[:-1]):  # a handful of values
        out = torch.where(index == i, value, out)
    return out


def colour_matrices(brightness: torch.Tensor, saturation: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) RGB matrices: chroma scaled by ``saturation`` and rotated by ``turns`` about the grey axis (in
    YIQ, so the grey is kept), then everything scaled by ``brightness``; all arguments (B,)."""
    forward, inverse = _yiq(brightness.device)
    angle = 2 * torch.pi * turns
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    chroma = torch.stack(
        [torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1), torch.stack([zero, sin, cos], -1)], -2
    )
    return brightness[:, None, None] * (inverse @ chroma @ forward)


def colour_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue jitter of float (B, 3, H, W) images in [0, 1].

    Factors are U(1 - r, 1 + r) for brightness (a multiplier), contrast (about the image's mean grey, as
    albumentations and torchvision) and saturation (a blend with the grey); the hue turns by U(-hue, hue) of a full
    circle. All four act linearly about the grey axis and commute, so they are one matrix and one offset per image,
    clipped once (albumentations clips after each op, in a random order).
    """
    batch = len(x)
    b = uniform(batch, 1 - brightness, 1 + brightness, generator)
    c = uniform(batch, 1 - contrast, 1 + contrast, generator)
    s = uniform(batch, 1 - saturation, 1 + saturation, generator)
    turns = uniform(batch, -hue, hue, generator)
    matrices = colour_matrices(b, s, turns) * c[:, None, None]
    mean_grey = luma(x).mean(dim=(1, 2))
    offset = (1 - c) * b * mean_grey
    jittered = torch.einsum("bij,bjhw->bihw", matrices, x) + offset[:, None, None, None]
    return torch.where(chance(batch, p, generator)[:, None, None, None], jittered.clamp_(0, 1), x)


def gaussian_kernels(sizes: torch.Tensor, sigma: torch.Tensor, window: int = KERNEL) -> torch.Tensor:
    """(B, window, window) normalised Gaussian kernels of odd ``sizes`` (B,) and ``sigma`` (B,), centred."""
    d = torch.arange(window, device=sizes.device, dtype=torch.float32) - window // 2
    weight = torch.exp(-0.5 * (d[None] / sigma[:, None]) ** 2) * (d[None].abs() <= sizes[:, None] // 2)
    weight = weight / weight.sum(-1, keepdim=True)
    return weight[:, :, None] * weight[:, None, :]


def motion_kernels(
    sizes: torch.Tensor, angle: torch.Tensor, direction: torch.Tensor, shift: torch.Tensor, window: int = KERNEL
) -> torch.Tensor:
    """(B, window, window) normalised line kernels, rasterised like albumentations' ``create_motion_kernel``.

    Args:
        sizes: (B,) odd kernel sizes k; the line has k samples inside the central k x k part of the window.
        angle: (B,) line angle, radians.
        direction: (B,) in [-1, 1]: -1 extends the line backward only, 0 both ways, 1 forward only.
        shift: (B, 2) offset of the line in units of half its half-length, each in [-1, 1].
    """
    half = (sizes // 2).float()
    start = -half * (1 - direction.clamp(min=0))
    end = half * (1 - (-direction).clamp(min=0))
    j = torch.arange(window, device=sizes.device, dtype=torch.float32)
    t = start[:, None] + (end - start)[:, None] * j[None] / (sizes[:, None] - 1).float()  # (B, window)
    valid = j[None] < sizes[:, None]
    centre = half[:, None] + shift * (half[:, None] / 2)  # (B, 2), kernel-local
    upper = (sizes - 1).float()[:, None]
    xs = torch.minimum(torch.round(centre[:, :1] + torch.cos(angle)[:, None] * t).clamp(min=0), upper)
    ys = torch.minimum(torch.round(centre[:, 1:] + torch.sin(angle)[:, None] * t).clamp(min=0), upper)
    offset = ((window - sizes) // 2).float()[:, None]
    xs, ys = xs + offset, ys + offset
    hit = (ys[:, :, None, None] == j[None, None, :, None]) & (xs[:, :, None, None] == j[None, None, None, :])
    kernel = (hit & valid[:, :, None, None]).any(1).float()
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def blur_kernels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, KERNEL, KERNEL) kernels: a Gaussian (sizes ``GAUSSIAN_SIZES``, sigma ``GAUSSIAN_SIGMA``) or a motion blur
    (sizes ``MOTION_SIZES``, any angle, direction and shift), each with probability 1/2, like albumentations'
    ``OneOf`` of the two."""
    gaussian = gaussian_kernels(choice(batch, GAUSSIAN_SIZES, generator), uniform(batch, *GAUSSIAN_SIGMA, generator))
    motion = motion_kernels(
        choice(batch, MOTION_SIZES, generator),
        uniform(batch, 0.0, 2 * np.pi, generator),
        uniform(batch, -1.0, 1.0, generator),
        uniform((batch, 2), -1.0, 1.0, generator),
    )
    return torch.where(chance(batch, 0.5, generator)[:, None, None], motion, gaussian)


def filter_per_image(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate each float (B, C, H, W) image with its own (B, k, k) kernel; reflected border (cv2's default)."""
    batch, channels, height, width = x.shape
    k = kernels.shape[-1]
    padded = F.pad(x, [k // 2] * 4, mode="reflect").reshape(1, batch * channels, height + k - 1, width + k - 1)
    weight = kernels[:, None].expand(batch, channels, k, k).reshape(batch * channels, 1, k, k)
    return F.conv2d(padded, weight, groups=batch * channels).view(batch, channels, height, width)


def blur(x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Blur each image with probability ``p`` with a kernel from ``blur_kernels``."""
    blurred = filter_per_image(x, blur_kernels(len(x), generator))
    return torch.where(chance(len(x), p, generator)[:, None, None, None], blurred, x)


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, p: float, std: tuple[float, float]) -> torch.Tensor:
    """Add per-pixel, per-channel Gaussian noise of sigma U(*std) (fractions of full scale), clipped to [0, 1]."""
    sigma = uniform((len(x), 1, 1, 1), *std, generator)
    noisy = (x + sigma * torch.randn(x.shape, generator=generator, device=x.device)).clamp_(0, 1)
    return torch.where(chance(len(x), p, generator)[:, None, None, None], noisy, x)


def cutout(
    x: torch.Tensor, generator: torch.Generator, p: float, holes: tuple[int, int], size: tuple[float, float]
) -> torch.Tensor:
    """Fill ``holes`` (an inclusive range) rectangles per image with uniform noise, like albumentations'
    CoarseDropout with ``fill="random"``: height and width are ``int(side x U(*size))``, drawn apart, and the
    corner is uniform over the positions that keep the hole inside."""
    batch, _, height, width = x.shape
    low, high = holes
    count = low + (torch.rand(batch, generator=generator, device=x.device) * (high - low + 1)).long()
    active = torch.arange(high, device=x.device)[None] < count[:, None]  # (B, high)
    hole_h = (height * uniform((batch, high), *size, generator)).floor()
    hole_w = (width * uniform((batch, high), *size, generator)).floor()
    top = (torch.rand((batch, high), generator=generator, device=x.device) * (height - hole_h + 1)).floor()
    left = (torch.rand((batch, high), generator=generator, device=x.device) * (width - hole_w + 1)).floor()
    rows = torch.arange(height, device=x.device, dtype=torch.float32)
    cols = torch.arange(width, device=x.device, dtype=torch.float32)
    in_rows = (rows >= top[..., None]) & (rows < (top + hole_h)[..., None])  # (B, high, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + hole_w)[..., None])  # (B, high, W)
    mask = (in_rows[..., :, None] & in_cols[..., None, :] & active[..., None, None]).any(1)  # (B, H, W)
    mask &= chance(batch, p, generator)[:, None, None]
    fill = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(mask[:, None], fill, x)


def photometric(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter, blur, noise and cutout of float (B, 3, H, W) images in [0, 1], each with its ``cfg``
    probability; ``generator`` must live on the images' device. Returns images in [0, 1]."""
    if cfg.color:
        x = colour_jitter(x, generator, cfg.color, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if cfg.blur:
        x = blur(x, generator, cfg.blur)
    if cfg.noise:
        x = gaussian_noise(x, generator, cfg.noise, cfg.noise_std)
    if cfg.cutout:
        x = cutout(x, generator, cfg.cutout, cfg.cutout_holes, cfg.cutout_size)
    return x
