"""The blend's picture: per-point error of the best single run vs the blend, drawn on the mean face."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_point_errors(
    path: str | Path,
    mean_face: np.ndarray,
    best_run: tuple[str, np.ndarray],
    blend: tuple[str, np.ndarray],
    *,
    reference: str = "best run",
    reference_score: str = "OOF MSE",
    candidate: str = "blend",
) -> None:
    """Write a PNG with three panels: the best run's per-point MSE, the blend's, and their ratio.

    Args:
        path: where to write the PNG (written as is: the caller makes it atomic).
        mean_face: (P, 2) mean landmark positions in pixels.
        best_run: label and (P,) per-point MSE of the best single run (or another reference).
        blend: label and (P,) per-point nested-CV MSE of the blend (or another candidate).
        reference, reference_score, candidate: how the panels name the two and the reference's score (``kit
            stack`` compares the stack with the best blend).
    """
    from matplotlib.colors import LogNorm, TwoSlopeNorm
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    (run_label, run_err), (blend_label, blend_err) = best_run, blend
    positive = np.concatenate([run_err, blend_err])
    positive = positive[positive > 0]
    low, high = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    norm = LogNorm(vmin=low, vmax=max(high, low * 1.0001))
    ratio = np.log2(np.maximum(blend_err, 1e-12) / np.maximum(run_err, 1e-12))
    span = max(float(np.abs(ratio).max()), 1e-3)

    fig = Figure(figsize=(15, 5.4), layout="constrained")
    axes = fig.subplots(1, 3)
    x, y = mean_face[:, 0], mean_face[:, 1]
    panels = (
        (run_err, norm, "viridis", f"{run_label}\n{reference_score} {run_err.mean():.3f}", "per-point MSE (px²)"),
        (blend_err, norm, "viridis", f"{blend_label}\nnested-CV MSE {blend_err.mean():.3f}", "per-point MSE (px²)"),
        (
            ratio,
            TwoSlopeNorm(0.0, -span, span),
            "coolwarm",
            f"log2({candidate} / {reference})",
            f"blue: {candidate} better",
        ),
    )
    for ax, (values, value_norm, cmap, title, label) in zip(axes, panels, strict=True):
        dots = ax.scatter(x, y, c=values, s=8, cmap=cmap, norm=value_norm)
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.invert_yaxis()  # image coordinates: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(dots, ax=ax, shrink=0.8, label=label)
    fig.savefig(path, dpi=90, format="png")
