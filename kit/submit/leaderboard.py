"""CV against the leaderboard: the submissions of the ledger that have both a local score and a public one, their
correlation and line of best fit, the ones whose public score disagrees with their CV, and the picture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import KitError
from kit.submit.ledger import Entry


@dataclass(frozen=True)
class Point:
    entry: Entry
    cv: float
    public: float

    @property
    def label(self) -> str:
        return f"#{self.entry.id} {self.entry.label}"


@dataclass(frozen=True)
class CvLb:
    """How well the CV predicts the public score."""

    points: list[Point]
    metric: str  # "mse" or "nme": which local score is the CV
    r: float  # Pearson correlation (NaN for fewer than 3 points or no spread)
    slope: float
    intercept: float
    outliers: list[tuple[Point, float, float]]  # (point, residual, the others' residual spread)
    sigma: float
    without_scores: list[Entry]  # entries with a CV but no public score yet


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = slope x + intercept`` (slope 0 when x has no spread)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def outliers(x: np.ndarray, y: np.ndarray, sigma: float = 3.0) -> list[tuple[int, float, float]]:
    """Points whose public score disagrees with their CV beyond the spread of the others.

    For each point, the line is fitted on the other points and its residual compared with the others' residual
    spread (RMS, two degrees of freedom taken by the line): flagged above ``sigma`` times it. Needs at least 4
    points (3 others, one degree of freedom left).

    Returns:
        ``(index, residual, spread)`` of each flagged point.
    """
    n = len(x)
    found = []
    if n < 4:
        return found
    for i in range(n):
        others = np.arange(n) != i
        slope, intercept = fit_line(x[others], y[others])
        residuals = y[others] - (slope * x[others] + intercept)
        spread = float(np.sqrt(np.sum(residuals**2) / max(others.sum() - 2, 1)))
        residual = float(y[i] - (slope * x[i] + intercept))
        floor = 1e-9 * max(1.0, float(np.abs(y).max()))
        if abs(residual) > sigma * max(spread, floor):
            found.append((i, residual, spread))
    return found


def cv_vs_lb(entries: Sequence[Entry], metric: str = "mse", sigma: float = 3.0) -> CvLb:
    """The CV-vs-public analysis of ``entries`` (only those with both scores take part).

    Raises:
        KitError: ``metric`` is not mse or nme.
    """
    if metric not in ("mse", "nme"):
        raise KitError(f"--metric {metric!r}: choose mse or nme")

    def cv(entry: Entry) -> float | None:
        return entry.source.cv_mse if metric == "mse" else entry.source.cv_nme

    points = [Point(e, cv(e), e.public_score) for e in entries if cv(e) is not None and e.public_score is not None]
    waiting = [e for e in entries if cv(e) is not None and e.public_score is None and e.state != "dry-run"]
    x = np.array([p.cv for p in points], dtype=np.float64)
    y = np.array([p.public for p in points], dtype=np.float64)
    slope, intercept = fit_line(x, y)
    r = float("nan")
    if len(points) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = float(np.corrcoef(x, y)[0, 1])
    flagged = [(points[i], residual, spread) for i, residual, spread in outliers(x, y, sigma)]
    return CvLb(points, metric, r, slope, intercept, flagged, sigma, waiting)


def plot_cv_vs_lb(path: str | Path, result: CvLb) -> None:
    """CV (x) against public score (y), one labelled dot per submission, the line of best fit and the correlation;
    submissions flagged as disagreeing in red, private scores (when revealed) as hollow squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kit.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=110)
    flagged = {id(p) for p, _, _ in result.outliers}
    private_shown = False
    for p in result.points:
        colour = "tab:red" if id(p) in flagged else "tab:blue"
        ax.scatter([p.cv], [p.public], color=colour, zorder=3)
        ax.annotate(p.label, (p.cv, p.public), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if p.entry.private_score is not None:
            label = None if private_shown else "private"
            private_shown = True
            ax.scatter(
                [p.cv], [p.entry.private_score], facecolors="none", edgecolors="tab:gray", marker="s", label=label
            )
    if len(result.points) >= 2 and np.isfinite(result.slope):
        xs = np.array([min(p.cv for p in result.points), max(p.cv for p in result.points)])
        ax.plot(xs, result.slope * xs + result.intercept, color="tab:green", lw=1, label="best fit (public)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    cv_name = "CV MSE (nested CV / OOF)" if result.metric == "mse" else "CV NME % (nested CV / OOF)"
    ax.set_xlabel(cv_name)
    ax.set_ylabel("public leaderboard score")
    r = f"r = {result.r:.3f}" if np.isfinite(result.r) else "r: needs 3+ submissions"
    fit = f", public = {result.slope:.3f} x CV {result.intercept:+.3f}" if np.isfinite(result.slope) else ""
    ax.set_title(f"CV vs public score: {len(result.points)} submissions, {r}{fit}", fontsize=9)
    if result.outliers:
        names = ", ".join(p.label for p, _, _ in result.outliers)
        fig.text(
            0.01, 0.01, f"disagree beyond {result.sigma:g}x the others' spread: {names}", color="tab:red", fontsize=8
        )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
