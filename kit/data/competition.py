"""A competition folder in the layout of "Thousand Facial Landmarks"."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kit.data.landmarks import Landmarks, TestPoints, read_landmarks, read_test_points
from kit.errors import DataError


@dataclass(frozen=True)
class Competition:
    """Paths and parsed tables of a competition folder (``train/``, ``test/``, optional ``private/``)."""

    root: Path

    @classmethod
    def load(cls, root: str | Path) -> Competition:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: competition folder not found")
        for rel in ("train/landmarks.csv", "train/images", "test/test_points.csv", "test/images"):
            if not (root / rel).exists():
                raise DataError(f"{root / rel}: missing (expected the competition layout)")
        return cls(root)

    @property
    def train_csv(self) -> Path:
        return self.root / "train" / "landmarks.csv"

    @property
    def test_csv(self) -> Path:
        return self.root / "test" / "test_points.csv"

    @property
    def train_image_dir(self) -> Path:
        return self.root / "train" / "images"

    @property
    def test_image_dir(self) -> Path:
        return self.root / "test" / "images"

    @property
    def private_csv(self) -> Path:
        return self.root / "private" / "test_landmarks.csv"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def flip_file(self) -> Path:
        return self.root / "flip_permutation.txt"

    @cached_property
    def train(self) -> Landmarks:
        return read_landmarks(self.train_csv)

    @cached_property
    def test(self) -> TestPoints:
        return read_test_points(self.test_csv, self.n_points)

    @property
    def n_points(self) -> int:
        return self.train.n_points

    def train_paths(self) -> list[Path]:
        return [self.train_image_dir / name for name in self.train.file_names]

    def test_paths(self) -> list[Path]:
        return [self.test_image_dir / name for name in self.test.file_names]

    def private_answers(self) -> Landmarks:
        """The test answers (synth competitions only), rows aligned with ``test_points.csv``."""
        answers = read_landmarks(self.private_csv)
        if answers.n_points != self.n_points:
            raise DataError(f"{self.private_csv}: {answers.n_points} points, the training set has {self.n_points}")
        order = {name: i for i, name in enumerate(answers.file_names)}
        missing = [name for name in self.test.file_names if name not in order]
        if missing:
            raise DataError(f"{self.private_csv}: no answer for test image '{missing[0]}'")
        rows = np.array([order[name] for name in self.test.file_names])
        return Landmarks(file_names=answers.file_names[rows], points=np.asarray(answers.points)[rows])

    def flip_permutation(self) -> np.ndarray | None:
        """The stored left/right permutation (written by ``kit check``), or None."""
        from kit.data.flip import load_permutation

        return load_permutation(self.flip_file) if self.flip_file.is_file() else None
