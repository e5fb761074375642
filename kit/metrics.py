"""The competition metric: mean squared error over all submitted coordinates, in original pixels."""

from __future__ import annotations

import numpy as np


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error over every coordinate."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: predictions {pred.shape}, answers {true.shape}")
    return float(np.mean((pred - true) ** 2))


def per_point_mse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """MSE of each point over images and both coordinates: (N, P, 2) -> (P,)."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return (diff**2).mean(axis=(0, 2))
