"""Landmark losses, computed on the device. Pure functions over (B, P, 2) coordinates in input pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
            (pred - target) / scale, torch.zeros_like(pred), cfg.awing_alpha, cfg.awing_omega,
            cfg.awing_epsilon, cfg.awing_theta,
        )
    raise ValueError(f"unknown loss {cfg.name!r}")
