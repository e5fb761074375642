"""Landmark losses, computed on the device. Pure functions over (B, P, 2) coordinates in input pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kit.codecs.heatmap import gaussian_log_factors
from kit.config import LossConfig


def wing(pred: torch.Tensor, target: torch.Tensor, w: float = 10.0, epsilon: float = 2.0) -> torch.Tensor:
    """Wing loss (Feng et al., 2018): logarithmic for small errors, L1 for large ones."""
    x = (pred - target).abs()
    c = w - w * math.log1p(w / epsilon)
    return torch.where(x < w, w * torch.log1p(x / epsilon), x - c).mean()


def adaptive_wing(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adaptive Wing loss (Wang et al., 2019) on heatmaps with target values ``target`` in [0, 1].

    ``weight`` is an optional per-pixel weight map (the paper's weighted loss map), same shape as ``pred``.
    """
    y = target
    delta = (y - pred).abs()
    power = alpha - y
    a = omega * (1 / (1 + (theta / epsilon) ** power)) * power * ((theta / epsilon) ** (power - 1)) / epsilon
    c = theta * a - omega * torch.log1p((theta / epsilon) ** power)
    loss = torch.where(delta < theta, omega * torch.log1p((delta / epsilon) ** power), a * delta - c)
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def coordinate_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The configured loss between predicted and true coordinates (input-crop pixels), as a scalar."""
    pred, target = pred.float(), target.float()
    if cfg.name == "mse":
        return F.mse_loss(pred, target)
    if cfg.name == "l1":
        return F.l1_loss(pred, target)
    if cfg.name == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=cfg.smooth_l1_beta)
    if cfg.name == "wing":
        return wing(pred, target, cfg.wing_w, cfg.wing_epsilon)
    if cfg.name == "adaptive_wing":
        # On coordinates there is no heatmap intensity: the error is scaled to the loss's unit range and the
        # exponent is alpha (target intensity 0), which keeps the loss smooth at zero and robust for large errors.
        scale = cfg.awing_omega
        return adaptive_wing(
            (pred - target) / scale,
            torch.zeros_like(pred),
            cfg.awing_alpha,
            cfg.awing_omega,
            cfg.awing_epsilon,
            cfg.awing_theta,
        )
    raise ValueError(f"unknown loss {cfg.name!r}")


# Heatmap losses. Heatmaps (B, P, h, w) are regressed linearly onto Gaussians of peak 1 given by separable factors
# gy (B, P, h) and gx (B, P, w): the target map gy[..., :, None] * gx[..., None, :] is only formed by broadcasting
# inside the loss, so a fusing compiler never stores it. Reduction: sum over each map's pixels, mean over maps, so
# the scale does not depend on the output stride.


def _outer(gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def heatmap_l2(heatmaps: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """Squared error between heatmaps (B, P, h, w) and the separable Gaussian targets."""
    return (heatmaps - _outer(gy, gx)).square().sum(dim=(-2, -1)).mean()


def awing_weight_map(gy: torch.Tensor, gx: torch.Tensor, weight: float = 10.0, threshold: float = 0.2) -> torch.Tensor:
    """The weighted loss map of Adaptive Wing: ``1 + weight`` where the 3x3 grey dilation of the target reaches
    ``threshold``, else 1.

    The dilation of a separable non-negative map is the product of the dilated factors (max of a product over a
    rectangle = product of the maxima), so it costs two 1D max-pools.
    """
    dy = F.max_pool1d(gy, 3, stride=1, padding=1)
    dx = F.max_pool1d(gx, 3, stride=1, padding=1)
    return 1.0 + weight * (_outer(dy, dx) >= threshold).to(gy.dtype)


def heatmap_adaptive_wing(
    heatmaps: torch.Tensor,
    gy: torch.Tensor,
    gx: torch.Tensor,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
    weight: float = 10.0,
    threshold: float = 0.2,
) -> torch.Tensor:
    """Adaptive Wing loss (Wang et al., 2019) between heatmaps and the separable Gaussian targets, with the paper's
    weighted loss map (``weight``, ``threshold``)."""
    h, w = heatmaps.shape[-2:]
    mean = adaptive_wing(
        heatmaps, _outer(gy, gx), alpha, omega, epsilon, theta, weight=awing_weight_map(gy, gx, weight, threshold)
    )
    return mean * (h * w)


def softmax_cross_entropy(logits: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (B, P) from the separable target distribution ``ty[..., :, None] * tx[..., None, :]`` to
    ``softmax(logits)`` over each map (B, P, h, w); the 2-D target is never formed."""
    log_pred = torch.log_softmax(logits.flatten(-2), dim=-1).view_as(logits)
    return -torch.einsum("bpy,bpyx,bpx->bp", ty, log_pred, tx)


def separable_entropy(log_ty: torch.Tensor, log_tx: torch.Tensor) -> torch.Tensor:
    """Entropy (B, P) of the separable distribution with per-axis log-probabilities ``log_ty``, ``log_tx``."""
    return -(log_ty.exp() * log_ty).sum(-1) - (log_tx.exp() * log_tx).sum(-1)


def gaussian_map_kl(logits: torch.Tensor, coords: torch.Tensor, sigma: float) -> torch.Tensor:
    """KL divergence (B, P) from separable Gaussian targets at map ``coords`` (B, P, 2) to ``softmax(logits)``."""
    log_ty, log_tx = gaussian_log_factors(coords, sigma, *logits.shape[-2:])
    return softmax_cross_entropy(logits, log_ty.exp(), log_tx.exp()) - separable_entropy(log_ty, log_tx)
