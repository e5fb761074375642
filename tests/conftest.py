"""Shared test helpers: tiny competition folders in the exact layout of the real one, written in milliseconds.

``build_competition(root, ...)`` writes one; the ``make_competition`` fixture does the same under ``tmp_path``.
The faces are a mirror-symmetric point layout in random small poses, so a flip permutation can be derived and
compared with the true one (``TinyCompetition.perm``, also written to ``private/flip_permutation.txt``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@dataclass
class TinyCompetition:
    """What ``build_competition`` wrote, for tests to compare against."""

    root: Path
    train_names: list[str]
    train_points: np.ndarray  # (N, P, 2) int, as written to train/landmarks.csv
    test_names: list[str]
    test_points: np.ndarray  # (M, P, 2) int, the answers in private/test_landmarks.csv
    test_indices: np.ndarray  # (M, K) int, as written to test/test_points.csv
    perm: np.ndarray  # (P,) the true left/right permutation

    @property
    def train_csv(self) -> Path:
        return self.root / "train" / "landmarks.csv"

    @property
    def test_csv(self) -> Path:
        return self.root / "test" / "test_points.csv"

    def train_image(self, i: int) -> Path:
        return self.root / "train" / "images" / self.train_names[i]

    def test_image(self, i: int) -> Path:
        return self.root / "test" / "images" / self.test_names[i]


def symmetric_layout(
    n_points: int, rng: np.random.Generator, min_dist: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A mirror-symmetric layout in [-1, 1]^2 (mirror axis x = 0) with points at least ``min_dist`` apart.

    Returns the (P, 2) layout, in a shuffled point order, and its left/right permutation.
    """
    min_dist = min(0.15, 0.6 / np.sqrt(n_points)) if min_dist is None else min_dist
    n_mid = n_points % 2 + 2 * min(n_points // 10, 4)
    n_pairs = (n_points - n_mid) // 2
    left = np.empty((0, 2))
    while len(left) < n_pairs:
        p = np.array([rng.uniform(min_dist, 0.9), rng.uniform(-0.9, 0.9)])
        if len(left) == 0 or np.hypot(*(left - p).T).min() > min_dist:
            left = np.vstack([left, p])
    mids = np.empty(0)
    while len(mids) < n_mid:
        y = rng.uniform(-0.9, 0.9)
        if len(mids) == 0 or np.abs(mids - y).min() > min_dist:
            mids = np.append(mids, y)
    layout = np.concatenate([left, left * [-1.0, 1.0], np.column_stack([np.zeros(n_mid), mids])])
    partner = np.concatenate([np.arange(n_pairs) + n_pairs, np.arange(n_pairs), 2 * n_pairs + np.arange(n_mid)])
    order = rng.permutation(n_points)
    rank = np.argsort(order)
    return layout[order], rank[partner[order]]


def random_poses(
    layout: np.ndarray, n: int, rng: np.random.Generator, max_angle: float = 10.0, scale=(20.0, 60.0), noise=0.0
) -> np.ndarray:
    """``n`` copies of ``layout`` rotated by up to ``max_angle`` degrees, scaled and shifted: (n, P, 2)."""
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle, n))
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # row-vector convention
    size = rng.uniform(*scale, n)
    shift = rng.uniform(0.0, 10.0, (n, 2))
    shapes = layout @ rot * size[:, None, None] + shift[:, None, :]
    return shapes + rng.normal(0.0, noise, shapes.shape) if noise else shapes


def _landmark_lines(names: list[str], points: np.ndarray) -> str:
    n_points = points.shape[1]
    header = "\t".join(["file_name"] + [f"Point_M{i}_{a}" for i in range(n_points) for a in "XY"])
    rows = ["\t".join([name, *map(str, p.reshape(-1).tolist())]) for name, p in zip(names, points, strict=True)]
    return "\n".join([header, *rows]) + "\n"


def build_competition(
    root: Path,
    n_train: int = 6,
    n_test: int = 3,
    n_points: int = 12,
    n_requested: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (40, 48),
    private: bool = True,
) -> TinyCompetition:
    """Write a tiny competition: JPEGs of ``size`` (H, W) with noise, tables with integer points inside them."""
    rng = np.random.default_rng(seed)
    height, width = size
    layout, perm = symmetric_layout(n_points, rng)
    n = n_train + n_test
    shapes = random_poses(layout, n, rng, scale=(0.3 * min(size), 0.4 * min(size)))
    shapes += np.array([width / 2.0, height / 2.0]) - shapes.mean(axis=1, keepdims=True)
    points = np.clip(np.rint(shapes), 0, [width - 1, height - 1]).astype(np.int64)
    names = [f"{i:05d}.jpg" for i in range(n)]
    for sub in ("train/images", "test/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        split = "train" if i < n_train else "test"
        assert cv2.imwrite(str(root / split / "images" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    train_names, test_names = names[:n_train], names[n_train:]
    (root / "train" / "landmarks.csv").write_text(_landmark_lines(train_names, points[:n_train]))
    indices = np.stack([rng.choice(n_points, n_requested, replace=False) for _ in range(n_test)])
    rows = [f"{name}\t{idx.tolist()}" for name, idx in zip(test_names, indices, strict=True)]
    (root / "test" / "test_points.csv").write_text("\n".join(["file_name\tpoint_index_list", *rows]) + "\n")
    if private:
        (root / "private").mkdir(exist_ok=True)
        (root / "private" / "test_landmarks.csv").write_text(_landmark_lines(test_names, points[n_train:]))
        (root / "private" / "flip_permutation.txt").write_text("".join(f"{j}\n" for j in perm))
    return TinyCompetition(root, train_names, points[:n_train], test_names, points[n_train:], indices, perm)


@pytest.fixture
def make_competition(tmp_path):
    """Factory: ``make_competition(name="comp", **kwargs)`` builds a tiny competition under ``tmp_path``."""

    def make(name: str = "comp", **kwargs) -> TinyCompetition:
        return build_competition(tmp_path / name, **kwargs)

    return make
