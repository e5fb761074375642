"""Shared test helpers, importable from any test folder as ``tiny`` (``tests/`` is on ``sys.path``).

Tiny competitions: ``build_competition(root, ...)`` writes a folder in the exact layout of the real one, in
milliseconds. The faces are a mirror-symmetric point layout in random small poses, so a flip permutation can be
derived and compared with the true one (``TinyCompetition.perm``, also written to ``private/flip_permutation.txt``).

Tiny pipelines: ``TINY_SETTINGS`` is the one base list of ``--set`` overrides that trains in seconds on a CPU; a
test file states only how its settings differ, with ``tiny_settings({...}, drop=(...))`` (``--set`` items),
``set_args(...)`` (command-line arguments) or ``tiny_pipeline({...})`` (the same settings as a nested dict).

Running kit: ``kit_command(*args)`` (the command line of ``python -m kit``) and ``run_kit(*args)`` (run it).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kit.config import apply_overrides

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TINY_SETTINGS = [
    "model.backbone=test_resnet",
    "input.size=32",
    "input.pad=4",
    "train.batch_size=8",
    "train.epochs=1",
    "train.num_workers=0",
    "train.report_images=0",
    "augment.blur=0",
    "augment.noise=0",
]


def _format(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tiny_settings(overrides: dict[str, object] | None = None, drop: Iterable[str] = ()) -> list[str]:
    """``TINY_SETTINGS`` with the ``drop`` keys left out, the ``overrides`` keys replaced in place and new ones
    added at the end: ``tiny_settings({"train.epochs": 2, "optim.lr": "3e-3"}, drop=["augment.noise"])``."""
    base = dict(item.split("=", 1) for item in TINY_SETTINGS)
    drop = set(drop)
    if unknown := drop - base.keys():
        raise KeyError(f"not in TINY_SETTINGS: {sorted(unknown)}")
    settings = {key: value for key, value in base.items() if key not in drop}
    settings |= {key: _format(value) for key, value in (overrides or {}).items()}
    return [f"{key}={value}" for key, value in settings.items()]


def set_args(settings: Iterable[str]) -> list[str]:
    """Command-line arguments: ``["--set", a, "--set", b, ...]``."""
    return [arg for item in settings for arg in ("--set", item)]


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_dicts else copy.deepcopy(value)
    return merged


def tiny_pipeline(overrides: dict | None = None) -> dict:
    """``TINY_SETTINGS`` as a nested pipeline dict (values parsed as ``--set`` parses them), with ``overrides``
    deep-merged into it: ``tiny_pipeline({"name": "a", "train": {"batch_size": 4}})``."""
    return _merge(apply_overrides({}, TINY_SETTINGS), overrides or {})


def kit_command(*args: str) -> list[str]:
    """The command line of ``python -m kit ARGS`` in this interpreter."""
    return [sys.executable, "-m", "kit", *args]


def run_kit(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``kit ARGS`` in a child process, its output captured (200 columns wide)."""
    env = os.environ | {"COLUMNS": "200"}
    return subprocess.run(kit_command(*args), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


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
