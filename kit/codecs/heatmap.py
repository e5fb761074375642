"""Heatmap codec: points <-> Gaussian target maps at an output stride, and sub-pixel decoders.

Pixel convention: input pixel centres lie at integer coordinates, and heatmap pixel ``j`` at stride ``s`` covers
input pixels ``[j s, (j + 1) s)``, so its centre is the input coordinate ``(j + 0.5) s - 0.5``. A point at input
coordinate ``x`` therefore sits at heatmap coordinate ``u = (x + 0.5) / s - 0.5``; a horizontal flip of the input
(``x -> W - 1 - x``) is exactly a flip of the heatmap (``u -> w - 1 - u``).

A network outputs one of two ``kind``s of map, and every decoder takes the kind: ``logits`` (integral regression:
the probability map is ``softmax(logits)``, the log-heatmap the logits themselves; decoding is invariant to adding
a constant) or ``heatmap`` values regressed linearly onto Gaussian targets of peak 1 (HRNet style: soft-argmax
weighs each pixel by its positive value, the log-heatmap is ``log(max(h, tiny))``). Local decoders transform only
the patch they read, so no float copy of the maps is made. Pure functions first; ``HeatmapCodec`` only holds the
configuration and calls them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from kit.codecs.decoders import ARGMAX, CODEC_DECODERS, DARK, LOCAL_SOFT_ARGMAX, SOFT_ARGMAX, CodecDecoder
from kit.errors import KitError

DECODERS = CODEC_DECODERS  # the decoders HeatmapCodec implements, by their names in the vocabulary
Outputs = Literal["logits", "heatmap"]
HEATMAP_FLOOR = 1e-12  # heatmap values below this (background, negatives) weigh nothing in the decoders
DARK_FLOOR = 1e-10  # the modulated heatmaps are floored here before their log (mmpose's DARK)


def log_heatmaps(maps: torch.Tensor, kind: Outputs = "logits") -> torch.Tensor:
    """Maps -> log-heatmaps in float32: logits as they are, heatmap values through ``log(max(h, tiny))``."""
    maps = maps.float()
    return maps if kind == "logits" else torch.log(maps.clamp_min(HEATMAP_FLOOR))


def to_heatmap_coords(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Input pixels -> heatmap pixels at ``stride`` (both with pixel centres at integers)."""
    return (points + 0.5) / stride - 0.5


def to_input_coords(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Heatmap pixels at ``stride`` -> input pixels."""
    return (coords + 0.5) * stride - 0.5


def gaussian_1d(coords: torch.Tensor, sigma: float | torch.Tensor, n: int) -> torch.Tensor:
    """``exp(-(j - c)^2 / (2 sigma^2))`` for pixels ``j = 0 .. n-1``: (...,) centres -> (..., n)."""
    grid = torch.arange(n, device=coords.device, dtype=coords.dtype)
    return torch.exp(-((grid - coords.unsqueeze(-1)) ** 2) / (2 * sigma**2))


def gaussian_factors(
    coords: torch.Tensor, sigma: float | torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable factors ``(gy (B, P, h), gx (B, P, w))`` of Gaussian maps centred on heatmap coordinates (B, P, 2).

    The map is ``gy[..., :, None] * gx[..., None, :]``: consumers can broadcast it without materialising it.
    """
    return gaussian_1d(coords[..., 1], sigma, height), gaussian_1d(coords[..., 0], sigma, width)


def gaussian_log_factors(
    coords: torch.Tensor, sigma: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis log-probabilities ``(log_ty (B, P, h), log_tx (B, P, w))`` of normalised Gaussians at map ``coords``.

    Built in log space, so a point off the map puts its mass on the nearest edge pixels instead of underflowing.
    """
    grid_y = torch.arange(height, device=coords.device, dtype=coords.dtype)
    grid_x = torch.arange(width, device=coords.device, dtype=coords.dtype)
    log_ty = torch.log_softmax(-((grid_y - coords[..., 1:]) ** 2) / (2 * sigma**2), -1)
    log_tx = torch.log_softmax(-((grid_x - coords[..., :1]) ** 2) / (2 * sigma**2), -1)
    return log_ty, log_tx


def gaussian_targets(coords: torch.Tensor, sigma: float | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Gaussian maps (B, P, h, w) with peak 1 at the (sub-pixel) heatmap coordinates (B, P, 2)."""
    gy, gx = gaussian_factors(coords, sigma, height, width)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def soft_argmax(maps: torch.Tensor, kind: Outputs = "logits") -> torch.Tensor:
    """Expected position over each whole map (integral regression): (B, P, h, w) -> (B, P, 2) heatmap pixels.

    The distribution is ``softmax(logits)``, or for heatmaps their positive part normalised to sum 1.
    """
    h, w = maps.shape[-2:]
    flat = maps.flatten(-2)
    if kind == "logits":
        prob = torch.softmax(flat, dim=-1, dtype=torch.float32)
    else:
        weight = flat.float().clamp_min(0)
        prob = weight / weight.sum(-1, keepdim=True).clamp_min(HEATMAP_FLOOR)
    prob = prob.unflatten(-1, (h, w))
    xs = torch.arange(w, device=maps.device, dtype=prob.dtype)
    ys = torch.arange(h, device=maps.device, dtype=prob.dtype)
    return torch.stack([(prob.sum(-2) * xs).sum(-1), (prob.sum(-1) * ys).sum(-1)], dim=-1)


def _argmax_xy(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer column and row of each map's maximum, (B, P) each."""
    index = maps.flatten(-2).argmax(-1)
    w = maps.shape[-1]
    return index % w, index // w


def argmax_decode(maps: torch.Tensor) -> torch.Tensor:
    """The maximum pixel of each map (either kind), (B, P, h, w) -> (B, P, 2) heatmap coordinates (whole pixels)."""
    ix, iy = _argmax_xy(maps)
    return torch.stack([ix, iy], dim=-1).float()


def _gather_values(
    maps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw map patches of side ``2 radius + 1`` centred on (ix, iy): values (B, P, k, k) and in-bounds mask.

    Indices outside the map are clamped to its border (replicate padding); the mask marks the real pixels.
    """
    h, w = maps.shape[-2:]
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    rows = iy.unsqueeze(-1) + offsets  # (B, P, k)
    cols = ix.unsqueeze(-1) + offsets
    index = rows.clamp(0, h - 1).unsqueeze(-1) * w + cols.clamp(0, w - 1).unsqueeze(-2)  # (B, P, k, k)
    values = maps.flatten(-2).gather(-1, index.flatten(-2)).view(index.shape)
    inside = ((rows >= 0) & (rows < h)).unsqueeze(-1) & ((cols >= 0) & (cols < w)).unsqueeze(-2)
    return values, inside


def _gather_patches(
    maps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, radius: int, kind: Outputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-heatmap patches of side ``2 radius + 1`` centred on (ix, iy) (replicate padding) and in-bounds mask."""
    values, inside = _gather_values(maps, ix, iy, radius)
    return log_heatmaps(values, kind), inside


def _box_overlap(pixels: torch.Tensor, centre: torch.Tensor, half: float) -> torch.Tensor:
    """Length of the overlap of pixel ``[p - 0.5, p + 0.5]`` with the window ``[c - half, c + half]``, in [0, 1]."""
    lo = torch.maximum(pixels - 0.5, centre.unsqueeze(-1) - half)
    hi = torch.minimum(pixels + 0.5, centre.unsqueeze(-1) + half)
    return (hi - lo).clamp(0.0, 1.0)


def local_soft_argmax(
    maps: torch.Tensor, window: int = 5, iterations: int = 5, kind: Outputs = "logits"
) -> torch.Tensor:
    """Soft-argmax inside a ``window`` x ``window`` box around each map's maximum, recentred on its estimate.

    The weights are the heatmap up to scale (``exp(logits - max)``, or the positive heatmap values). A box fixed on
    the maximum pixel biases a peak between pixels towards that pixel; each of the ``iterations`` moves the box
    (with fractional edge pixels) to the current estimate, which converges to the centre of a symmetric peak.
    Differentiable in the maps. ``iterations=0`` is the plain windowed soft-argmax.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    radius = window // 2
    margin = 2  # the box may move by up to 1.5 pixels from the maximum
    ix, iy = _argmax_xy(maps)
    values, inside = _gather_patches(maps, ix, iy, radius + margin, kind)
    weights = torch.exp(values - values.amax(dim=(-2, -1), keepdim=True)) * inside
    offsets = torch.arange(-radius - margin, radius + margin + 1, device=maps.device, dtype=weights.dtype)
    cx = ix.to(weights.dtype)
    cy = iy.to(weights.dtype)
    xs, ys = cx.unsqueeze(-1) + offsets, cy.unsqueeze(-1) + offsets  # (B, P, k) pixel coordinates
    x0, y0 = cx, cy
    for _ in range(iterations + 1):
        wx = _box_overlap(xs, cx, radius + 0.5)
        wy = _box_overlap(ys, cy, radius + 0.5)
        # The box is separable: marginals of (weights x box) without forming the product.
        columns = (weights * wy.unsqueeze(-1)).sum(-2) * wx
        rows = (weights * wx.unsqueeze(-2)).sum(-1) * wy
        total = columns.sum(-1).clamp_min(1e-12)
        cx = ((columns * xs).sum(-1) / total).clamp(x0 - 1.5, x0 + 1.5)
        cy = ((rows * ys).sum(-1) / total).clamp(y0 - 1.5, y0 + 1.5)
    return torch.stack([cx, cy], dim=-1)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``sigma``, radius ``ceil(2.5 sigma)``: DARK's 11 taps at sigma 2, 17 at sigma 3."""
    radius = max(1, math.ceil(2.5 * sigma))
    grid = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _modulated_log_patches(
    maps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, radius: int, blur: float, kind: Outputs
) -> torch.Tensor:
    """``log`` of the heatmaps convolved with a Gaussian of sigma ``blur``, on the patches around (ix, iy).

    Equal to modulating each whole map (zero outside it) and reading the patch, but only the pixels the patch
    depends on are read (side ``2 radius + 1`` plus twice the kernel's radius). Heatmap values are blurred as they
    are, negatives included (noise averages out); logits as ``exp(logits - max)``. The result is floored at
    ``DARK_FLOOR`` before the log.
    """
    kernel = _gaussian_kernel(blur, maps.device, torch.float32)
    values, inside = _gather_values(maps, ix, iy, radius + len(kernel) // 2)
    values = values.float()
    if kind == "logits":
        values = torch.exp(values - values.amax(dim=(-2, -1), keepdim=True))
    heat = values * inside
    # Separable valid convolution down to the (2 radius + 1)^2 patch.
    heat = heat.unfold(-1, len(kernel), 1) @ kernel
    heat = heat.transpose(-1, -2).unfold(-1, len(kernel), 1) @ kernel
    return torch.log(heat.transpose(-1, -2).clamp_min(DARK_FLOOR))


def _axis_derivatives(
    f: torch.Tensor, index: torch.Tensor, size: int, axis: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and second derivative of 5 x 5 log patches ``f`` along ``axis`` (-1: x, -2: y) at their centre.

    The first derivative is the central difference at distance 1, the second at distance 2 (DARK's 5-point
    stencil), at distance 1 one pixel from the map's edge. A peak on the edge itself is not refined along that
    axis: derivative 0, curvature -1, and the returned mask (whether the axis is refined) is False.
    """
    line = f[..., 2, :] if axis == -1 else f[..., :, 2]
    centre = line[..., 2]
    near = (index >= 1) & (index <= size - 2)
    wide = (index >= 2) & (index <= size - 3)
    d = torch.where(near, (line[..., 3] - line[..., 1]) / 2, torch.zeros_like(centre))
    d2_wide = (line[..., 4] - 2 * centre + line[..., 0]) / 4
    d2_near = line[..., 3] - 2 * centre + line[..., 1]
    d2 = torch.where(wide, d2_wide, torch.where(near, d2_near, torch.full_like(centre, -1.0)))
    return d, d2, near


def dark_refine(maps: torch.Tensor, coords: torch.Tensor, blur: float = 0.0, kind: Outputs = "logits") -> torch.Tensor:
    """DARK refinement (Zhang et al., 2020): one Newton step on the log-heatmap at integer ``coords`` (B, P, 2).

    With ``blur`` > 0 the heatmap is first modulated by a Gaussian of that sigma, which should be the training
    targets' sigma (mmpose's kernel sizes 11 and 17 at sigma 2 and 3): a noisy peak becomes smooth, and the log of
    the blurred Gaussian is still a quadratic, refined exactly. Derivatives as mmpose's ``refine_keypoints_dark``:
    central differences at distance 1, second differences at distance 2, the mixed term from the four diagonal
    neighbours. The step is dropped where the Hessian is not negative definite, and along an axis where the
    peak lies on the map's edge; it is clipped to the stencil's two pixels. Batched, no host synchronisation.
    """
    h, w = maps.shape[-2:]
    ix, iy = coords[..., 0].long(), coords[..., 1].long()
    if blur > 0:
        f = _modulated_log_patches(maps, ix, iy, 2, blur, kind)
    else:
        f = _gather_patches(maps, ix, iy, 2, kind)[0]
    dx, dxx, near_x = _axis_derivatives(f, ix, w, -1)
    dy, dyy, near_y = _axis_derivatives(f, iy, h, -2)
    dxy = (f[..., 3, 3] - f[..., 1, 3] - f[..., 3, 1] + f[..., 1, 1]) / 4
    dxy = torch.where(near_x & near_y, dxy, torch.zeros_like(dxy))
    det = dxx * dyy - dxy**2
    valid = (det > 1e-12) & (dxx < 0)
    safe = torch.where(valid, det, torch.ones_like(det))
    step_x = torch.where(valid, -(dyy * dx - dxy * dy) / safe, torch.zeros_like(det)).clamp(-2, 2)
    step_y = torch.where(valid, -(dxx * dy - dxy * dx) / safe, torch.zeros_like(det)).clamp(-2, 2)
    return coords.float() + torch.stack([step_x, step_y], dim=-1)


def dark_decode(maps: torch.Tensor, blur: float = 0.0, kind: Outputs = "logits") -> torch.Tensor:
    """Argmax, then DARK refinement with modulation sigma ``blur`` (0: none): (B, P, h, w) -> (B, P, 2)."""
    return dark_refine(maps, argmax_decode(maps), blur, kind)


@dataclass(frozen=True)
class HeatmapCodec:
    """Encodes input-pixel points as Gaussian maps at an output stride and decodes network maps back to points."""

    stride: int = 4  # heatmap pixel = stride x stride input pixels
    sigma: float = 1.5  # Gaussian sigma of the targets, heatmap pixels
    sigma_end: float | None = None  # sigma at the end of training (linear schedule); None: constant
    decoder: CodecDecoder = SOFT_ARGMAX
    window: int = 5  # box of local_soft_argmax, heatmap pixels (odd)
    iterations: int = 5  # recentring steps of local_soft_argmax
    dark_blur: float | None = None  # Gaussian modulation sigma of dark, heatmap pixels; None: final sigma, 0: none
    outputs: Outputs = "logits"  # what the network predicts: logits (integral) or heatmap values (Gaussian targets)

    def __post_init__(self):
        if self.stride not in (1, 2, 4):
            raise KitError(f"model.heatmap.stride: {self.stride} (choose 1, 2 or 4)")
        if self.sigma <= 0 or (self.sigma_end is not None and self.sigma_end <= 0):
            raise KitError("model.heatmap.sigma: must be positive")
        if self.decoder not in DECODERS:
            raise KitError(f"model.heatmap.decoder: '{self.decoder}' (choose from {', '.join(DECODERS)})")
        if self.window < 1 or self.window % 2 == 0:
            raise KitError(f"model.heatmap.window: {self.window} (must be odd and positive)")
        if self.dark_blur is not None and self.dark_blur < 0:
            raise KitError(f"model.heatmap.dark_blur: {self.dark_blur} (must be >= 0, or null for the target sigma)")
        if self.outputs not in ("logits", "heatmap"):
            raise ValueError(f"outputs must be 'logits' or 'heatmap', got {self.outputs!r}")

    def sigma_at(self, progress: float) -> float:
        """Target sigma at training ``progress`` in [0, 1]."""
        if self.sigma_end is None:
            return self.sigma
        return self.sigma + (self.sigma_end - self.sigma) * min(max(progress, 0.0), 1.0)

    @property
    def dark_sigma(self) -> float:
        """Modulation sigma of the dark decoder: ``dark_blur``, or the targets' sigma at the end of training."""
        return self.sigma_at(1.0) if self.dark_blur is None else self.dark_blur

    def factors(
        self, points: torch.Tensor, size: tuple[int, int], progress: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Separable target factors ``(gy, gx)`` for (B, P, 2) input-pixel points, on the points' device."""
        coords = to_heatmap_coords(points.float(), self.stride)
        return gaussian_factors(coords, self.sigma_at(progress), *size)

    def log_factors(
        self, points: torch.Tensor, size: tuple[int, int], progress: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis log-probabilities ``(log_ty, log_tx)`` of the normalised Gaussian targets (the KL loss's)."""
        return gaussian_log_factors(to_heatmap_coords(points.float(), self.stride), self.sigma_at(progress), *size)

    def encode(self, points: torch.Tensor, size: tuple[int, int], progress: float = 0.0) -> torch.Tensor:
        """Target maps (B, P, h, w), peak 1, for (B, P, 2) input-pixel points; ``size`` = (h, w) of the maps."""
        gy, gx = self.factors(points, size, progress)
        return gy.unsqueeze(-1) * gx.unsqueeze(-2)

    def decode_heatmap_coords(self, outputs: torch.Tensor, decoder: CodecDecoder | None = None) -> torch.Tensor:
        """Network outputs (B, P, h, w) -> (B, P, 2) heatmap coordinates with ``decoder`` (default: the codec's)."""
        decode = _DECODE.get(decoder or self.decoder)
        if decode is None:
            raise KitError(f"heatmap decoder '{decoder}' (choose from {', '.join(DECODERS)})")
        return decode(self, outputs)

    def decode(self, outputs: torch.Tensor, decoder: CodecDecoder | None = None) -> torch.Tensor:
        """Network outputs (B, P, h, w) -> (B, P, 2) input pixels."""
        with torch.autocast(outputs.device.type, enabled=False):  # bf16 would cost sub-pixel precision
            return to_input_coords(self.decode_heatmap_coords(outputs, decoder), self.stride)


_DECODE: dict[str, Callable[[HeatmapCodec, torch.Tensor], torch.Tensor]] = {  # keyed by every name of DECODERS
    ARGMAX: lambda codec, maps: argmax_decode(maps),
    SOFT_ARGMAX: lambda codec, maps: soft_argmax(maps, codec.outputs),
    LOCAL_SOFT_ARGMAX: lambda codec, maps: local_soft_argmax(maps, codec.window, codec.iterations, codec.outputs),
    DARK: lambda codec, maps: dark_decode(maps, codec.dark_sigma, codec.outputs),
}
