"""SimCC codec: points <-> per-axis classification over sub-pixel bins (Li et al., 2022; RTMPose), and decoders.

Pixel convention: input pixel centres lie at integer coordinates, and at split ratio ``k`` bin ``i`` covers input
coordinates ``[i / k - 0.5, (i + 1) / k - 0.5)``, so its centre is the input coordinate ``(i + 0.5) / k - 0.5``. A
point at input coordinate ``x`` sits at bin coordinate ``u = (x + 0.5) k - 0.5``; with ``n = k x size`` bins a
horizontal flip of the input (``x -> W - 1 - x``) is exactly a reversal of the x bins (``u -> n - 1 - u``).

Targets are Gaussian label smoothing: for each point and axis a distribution over the bins proportional to
``exp(-(i - u)^2 / (2 sigma^2))`` (sigma in bins), built in log space so that a point outside the bins (moved there
by augmentation) puts its mass on the nearest edge bins instead of dividing zero by zero. The loss is the KL
divergence from the target to ``softmax(logits)``. Network outputs are one tensor (B, P, n_x + n_y): the x logits,
then the y logits. Pure functions first; ``SimCCCodec`` only holds the configuration and calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kit.codecs.decoders import ARGMAX, CODEC_DECODERS, DARK, LOCAL_SOFT_ARGMAX, SOFT_ARGMAX, CodecDecoder
from kit.errors import KitError

DECODERS = CODEC_DECODERS  # the decoders SimCCCodec implements, by their names in the vocabulary


def to_bins(points: torch.Tensor, split_ratio: float) -> torch.Tensor:
    """Input pixels -> bin coordinates at ``split_ratio`` (both with centres at integers)."""
    return (points + 0.5) * split_ratio - 0.5


def from_bins(coords: torch.Tensor, split_ratio: float) -> torch.Tensor:
    """Bin coordinates -> input pixels."""
    return (coords + 0.5) / split_ratio - 0.5


def gaussian_log_targets(coords: torch.Tensor, sigma: float, n: int) -> torch.Tensor:
    """Log-probabilities (..., n) of the Gaussian-smoothed label over ``n`` bins for bin coordinates (...,)."""
    grid = torch.arange(n, device=coords.device, dtype=coords.dtype)
    return torch.log_softmax(-((grid - coords.unsqueeze(-1)) ** 2) / (2 * sigma**2), dim=-1)


def kl_divergence(logits: torch.Tensor, log_targets: torch.Tensor) -> torch.Tensor:
    """``KL(target || softmax(logits))`` over the last dimension, in float32: (..., n) -> (...,)."""
    log_pred = torch.log_softmax(logits.float(), dim=-1)
    targets = log_targets.exp()
    return torch.where(targets > 0, targets * (log_targets - log_pred), 0.0).sum(-1)


def argmax_1d(logits: torch.Tensor) -> torch.Tensor:
    """The maximum bin (whole bins): (..., n) -> (...,)."""
    return logits.argmax(-1).float()


def soft_argmax_1d(logits: torch.Tensor) -> torch.Tensor:
    """Expected bin under ``softmax(logits)`` over all bins (differentiable): (..., n) -> (...,)."""
    prob = torch.softmax(logits, dim=-1, dtype=torch.float32)
    return (prob * torch.arange(logits.shape[-1], device=logits.device, dtype=prob.dtype)).sum(-1)


def _box_overlap(bins: torch.Tensor, centre: torch.Tensor, half: float) -> torch.Tensor:
    """Length of the overlap of bin ``[b - 0.5, b + 0.5]`` with the window ``[c - half, c + half]``, in [0, 1]."""
    lo = torch.maximum(bins - 0.5, centre.unsqueeze(-1) - half)
    hi = torch.minimum(bins + 0.5, centre.unsqueeze(-1) + half)
    return (hi - lo).clamp(0.0, 1.0)


def local_soft_argmax_1d(logits: torch.Tensor, window: int = 11, iterations: int = 5) -> torch.Tensor:
    """Soft-argmax inside a ``window``-bin box around the maximum, recentred on its estimate: (..., n) -> (...,).

    A box fixed on the maximum bin biases a peak between bins towards that bin; each of the ``iterations`` moves the
    box (with fractional edge bins) to the current estimate, which converges to the centre of a symmetric peak.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    n, radius, margin = logits.shape[-1], window // 2, 2  # the box may move by up to 1.5 bins from the maximum
    peak = logits.argmax(-1)
    bins = peak.unsqueeze(-1) + torch.arange(-radius - margin, radius + margin + 1, device=logits.device)
    inside = (bins >= 0) & (bins < n)
    values = logits.gather(-1, bins.clamp(0, n - 1)).float()
    weights = torch.exp(values - values.amax(-1, keepdim=True)) * inside
    bins = bins.float()
    start = centre = peak.float()
    for _ in range(iterations + 1):
        w = weights * _box_overlap(bins, centre, radius + 0.5)
        centre = ((w * bins).sum(-1) / w.sum(-1).clamp_min(1e-12)).clamp(start - 1.5, start + 1.5)
    return centre


def dark_1d(logits: torch.Tensor) -> torch.Tensor:
    """Argmax refined by one Newton step on the logits (DARK in 1-D): exact for a log-Gaussian peak.

    The step is dropped at the edge bins and where the logits are not concave, and clipped to one bin.
    """
    n = logits.shape[-1]
    peak = logits.argmax(-1, keepdim=True)
    around = logits.gather(-1, (peak + torch.arange(-1, 2, device=logits.device)).clamp(0, n - 1)).float()
    d1 = (around[..., 2] - around[..., 0]) / 2
    d2 = around[..., 2] - 2 * around[..., 1] + around[..., 0]
    peak = peak.squeeze(-1)
    valid = (d2 < -1e-12) & (peak > 0) & (peak < n - 1)
    step = torch.where(valid, -d1 / torch.where(valid, d2, torch.ones_like(d2)), torch.zeros_like(d2))
    return peak.float() + step.clamp(-1.0, 1.0)


@dataclass(frozen=True)
class SimCCCodec:
    """Encodes input-pixel points as per-axis bin distributions and decodes per-axis logits back to points."""

    input_size: int  # square model input, pixels
    split_ratio: float = 2.0  # bins per input pixel
    sigma: float = 2.0  # Gaussian label smoothing, bins
    decoder: CodecDecoder = LOCAL_SOFT_ARGMAX
    window: int = 11  # box of local_soft_argmax, bins (odd)
    iterations: int = 5  # recentring steps of local_soft_argmax

    def __post_init__(self):
        bins = self.input_size * self.split_ratio
        if self.split_ratio <= 0 or abs(bins - round(bins)) > 1e-6:
            raise KitError(
                f"model.simcc.split_ratio: {self.split_ratio} x input.size {self.input_size} must be a whole "
                "number of bins"
            )
        if self.sigma <= 0:
            raise KitError("model.simcc.sigma: must be positive")
        if self.decoder not in DECODERS:
            raise KitError(f"model.simcc.decoder: '{self.decoder}' (choose from {', '.join(DECODERS)})")
        if self.window < 1 or self.window % 2 == 0:
            raise KitError(f"model.simcc.window: {self.window} (must be odd and positive)")

    @property
    def bins(self) -> int:
        """Bins per axis (the input is square)."""
        return round(self.input_size * self.split_ratio)

    def log_targets(self, points: torch.Tensor) -> torch.Tensor:
        """Log target distributions (B, P, 2, n) for (B, P, 2) input-pixel points: x, then y."""
        return gaussian_log_targets(to_bins(points.float(), self.split_ratio), self.sigma, self.bins)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Target distributions (B, P, 2 n), each axis summing to 1, laid out like the network outputs."""
        return self.log_targets(points).exp().flatten(-2)

    def loss(self, outputs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Mean over points and axes of the KL divergence from the targets of ``points`` to ``softmax(outputs)``."""
        logits = outputs.unflatten(-1, (2, self.bins))
        return kl_divergence(logits, self.log_targets(points)).mean()

    def decode_bins(self, outputs: torch.Tensor, decoder: CodecDecoder | None = None) -> torch.Tensor:
        """Network outputs (B, P, 2 n) -> (B, P, 2) bin coordinates with ``decoder`` (default: the codec's)."""
        decode = _DECODE.get(decoder or self.decoder)
        if decode is None:
            raise KitError(f"simcc decoder '{decoder}' (choose from {', '.join(DECODERS)})")
        return decode(self, outputs.unflatten(-1, (2, self.bins)))

    def decode(self, outputs: torch.Tensor, decoder: CodecDecoder | None = None) -> torch.Tensor:
        """Network outputs (B, P, 2 n) -> (B, P, 2) input pixels."""
        with torch.autocast(outputs.device.type, enabled=False):  # bf16 would cost sub-pixel precision
            return from_bins(self.decode_bins(outputs, decoder), self.split_ratio)


_DECODE: dict[str, Callable[[SimCCCodec, torch.Tensor], torch.Tensor]] = {  # keyed by every name of DECODERS
    ARGMAX: lambda codec, logits: argmax_1d(logits),
    SOFT_ARGMAX: lambda codec, logits: soft_argmax_1d(logits),
    LOCAL_SOFT_ARGMAX: lambda codec, logits: local_soft_argmax_1d(logits, codec.window, codec.iterations),
    DARK: lambda codec, logits: dark_1d(logits),
}
