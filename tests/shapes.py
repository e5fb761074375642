"""Face shapes for tests, importable from any test folder (unlike ``conftest``, whose name each folder reuses)."""

from __future__ import annotations

import numpy as np


def ibug68_layout() -> np.ndarray:
    """A face drawn in the iBUG 68-point order (image axes, mirror axis x = 0), from its parts' geometry."""
    jaw_angle = np.pi * np.arange(17) / 16
    jaw = np.stack([-np.cos(jaw_angle), -0.2 + 1.2 * np.sin(jaw_angle)], 1)
    k = np.arange(5)
    brow_left = np.stack([-0.8 + 0.16 * k, -0.55 - 0.1 * np.sin(np.pi * k / 4)], 1)
    brows = np.concatenate([brow_left, brow_left[::-1] * [-1, 1]])
    bridge = np.stack([np.zeros(4), -0.35 + 0.12 * np.arange(4)], 1)
    nostrils = np.stack([-0.2 + 0.1 * k, 0.12 + 0.03 * np.abs(k - 2)], 1)
    eye_angle = np.pi - np.pi / 3 * np.arange(6)  # outer corner, two upper, inner corner, two lower
    eye_left = np.stack([-0.4 + 0.2 * np.cos(eye_angle), -0.3 - 0.07 * np.sin(eye_angle)], 1)
    eye_right = eye_left[[3, 2, 1, 0, 5, 4]] * [-1, 1]  # inner corner, two upper, outer corner, two lower
    outer_angle = np.pi - np.pi / 6 * np.arange(12)
    outer = np.stack([0.35 * np.cos(outer_angle), 0.45 - 0.15 * np.sin(outer_angle)], 1)
    inner_angle = np.pi - np.pi / 4 * np.arange(8)
    inner = np.stack([0.25 * np.cos(inner_angle), 0.45 - 0.06 * np.sin(inner_angle)], 1)
    return np.concatenate([jaw, brows, bridge, nostrils, eye_left, eye_right, outer, inner])
