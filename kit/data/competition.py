"""A competition folder in the layout of "Thousand Facial Landmarks", and the workspace of its derived files.

An optional ``nme_points.txt`` at the competition root names the two points whose distance is a face's size for
NME (one line ``36 45``: the outer eye corners of 68-point faces); without it NME uses the face box.

Derived files (parsed-table and crop caches, ``folds.csv``, ``flip_permutation.txt``) go to the workspace: the
data folder itself when it is writable, else (a Kaggle notebook's read-only ``/kaggle/input``) a folder per data
set under the kit cache; ``--workspace`` or ``$KIT_WORKSPACE`` choose another.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from kit.data.landmarks import Landmarks, TestPoints, read_landmarks, read_test_points
from kit.errors import DataError

WORKSPACE_ENV = "KIT_WORKSPACE"
FOLDS_FILE = "folds.csv"
FLIP_FILE = "flip_permutation.txt"
NME_POINTS_FILE = "nme_points.txt"
CACHE_FOLDER = ".kit_cache"


def check_nme_points(pair, n_points: int | None, source: str) -> tuple[int, int]:
    """``pair`` as two distinct point numbers in ``0..n_points-1`` (any non-negative ones when ``n_points`` is None).

    Raises:
        DataError: ``SOURCE: ...`` saying what is wrong.
    """
    values = tuple(pair)
    if len(values) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        raise DataError(f"{source}: expected two point numbers, got {list(values)}")
    a, b = (int(v) for v in values)
    if a == b:
        raise DataError(f"{source}: the two points must differ (got {a} twice)")
    for v in (a, b):
        if v < 0 or (n_points is not None and v >= n_points):
            have = f"the faces have {n_points} points, numbered 0..{n_points - 1}" if n_points else "numbers from 0"
            raise DataError(f"{source}: point {v} out of range ({have})")
    return a, b


def read_nme_points(path: str | Path, n_points: int | None = None) -> tuple[int, int]:
    """The pair in an ``nme_points.txt`` (one line: two point numbers separated by white space).

    Raises:
        DataError: naming the file, when it is unreadable or does not hold two distinct points in range.
    """
    path = Path(path)
    try:
        fields = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__})") from None
    try:
        pair = [int(v) for v in fields]
    except ValueError:
        raise DataError(f"{path}: expected two point numbers such as '36 45', got {' '.join(fields)!r}") from None
    return check_nme_points(pair, n_points, str(path))


def write_nme_points(root: str | Path, pair: tuple[int, int], n_points: int | None = None) -> Path:
    """Write ``root/nme_points.txt`` (atomically): the points whose distance is the face size for NME.

    Raises:
        DataError: the pair is not two distinct points (in ``0..n_points-1`` when ``n_points`` is given).
    """
    from kit.io import write_text

    a, b = check_nme_points(pair, n_points, f"{Path(root) / NME_POINTS_FILE}")
    path = Path(root) / NME_POINTS_FILE
    write_text(path, f"{a} {b}\n")
    return path


def resolve_workspace(root: str | Path, workspace: str | Path | None = None) -> tuple[Path, str]:
    """Where the derived files of the data in ``root`` go, and why.

    Explicit ``workspace`` > ``$KIT_WORKSPACE`` > ``root`` when writable > ``<kit cache>/workspaces/<name>-<hash>``.

    Returns:
        The folder (not created) and the reason: ``--workspace``, ``KIT_WORKSPACE``, ``data folder`` or
        ``data folder is read-only``.
    """
    root = Path(root)
    if workspace is not None and str(workspace) != "":
        return _folder(Path(workspace), "--workspace "), "--workspace"
    if os.environ.get(WORKSPACE_ENV):
        return _folder(Path(os.environ[WORKSPACE_ENV]), f"{WORKSPACE_ENV}="), WORKSPACE_ENV
    if os.access(root, os.W_OK):
        return root, "data folder"
    resolved = root.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return _kit_cache_dir() / "workspaces" / f"{resolved.name or 'data'}-{digest}", "data folder is read-only"


def _folder(path: Path, what: str) -> Path:
    """``path``, unless it (or a parent) is a file.

    Raises:
        DataError: ``{what}{path}: ... is a file, not a folder`` with the remedy.
    """
    absolute = path.absolute()
    existing = next((p for p in (absolute, *absolute.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == absolute else f" ({existing} is a file)"
        raise DataError(f"{what}{path}: not a folder{where}; point it at a folder for the derived files")
    return path


def _kit_cache_dir() -> Path:
    """``kit.models.weights.cache_dir()`` without importing torch and timm: ``$KIT_CACHE_DIR`` or ``~/.cache/kit``."""
    return Path(os.environ.get("KIT_CACHE_DIR", Path.home() / ".cache" / "kit"))


@dataclass(frozen=True)
class Competition:
    """Paths and parsed tables of a competition folder (``train/``, ``test/``, optional ``private/``).

    ``workspace`` is where derived files are written (default: resolved by ``resolve_workspace``).
    """

    root: Path
    workspace: Path = None  # type: ignore[assignment]  # resolved in __post_init__
    workspace_reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.workspace is None:
            workspace, reason = resolve_workspace(self.root)
            object.__setattr__(self, "workspace", workspace)
            object.__setattr__(self, "workspace_reason", reason)
        else:
            object.__setattr__(self, "workspace", Path(self.workspace))
            object.__setattr__(self, "workspace_reason", self.workspace_reason or "--workspace")

    @classmethod
    def load(cls, root: str | Path, workspace: str | Path | None = None) -> Competition:
        """Check the layout of ``root``; derived files go to ``workspace`` (see ``resolve_workspace``).

        Raises:
            DataError: the folder or one of its tables or image folders is missing.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: competition folder not found")
        for rel in ("train/landmarks.csv", "train/images", "test/test_points.csv", "test/images"):
            if not (root / rel).exists():
                raise DataError(f"{root / rel}: missing (expected the competition layout)")
        path, reason = resolve_workspace(root, workspace)
        return cls(root, path, reason)

    @property
    def workspace_note(self) -> str | None:
        """``workspace: PATH (REASON)`` when derived files do not go beside the data, else None."""
        if self.workspace.absolute() == self.root.absolute():
            return None
        return f"workspace: {self.workspace} ({self.workspace_reason})"

    @property
    def cache_dir(self) -> Path:
        """The caches' folder (crops), in the workspace."""
        return self.workspace / CACHE_FOLDER

    def table_cache_dir(self, table: Path) -> Path:
        """Cache folder of the parsed ``table`` (under ``root``): ``.kit_cache`` in its twin folder in the workspace."""
        return self.workspace / Path(table).parent.relative_to(self.root) / CACHE_FOLDER

    def derived_file(self, name: str) -> Path:
        """Where the derived file ``name`` is read: the workspace's, or one left beside read-only data before."""
        target = self.workspace / name
        beside = self.root / name
        return beside if not target.is_file() and beside.is_file() else target

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
        """The fold split to read (write a new one to ``workspace / FOLDS_FILE``)."""
        return self.derived_file(FOLDS_FILE)

    @property
    def flip_file(self) -> Path:
        """The flip permutation to read (write a new one to ``workspace / FLIP_FILE``)."""
        return self.derived_file(FLIP_FILE)

    @property
    def nme_points_file(self) -> Path:
        return self.root / NME_POINTS_FILE

    @cached_property
    def nme_points(self) -> tuple[int, int] | None:
        """The two points whose distance is a face's size for NME (``nme_points.txt``), or None: the face box.

        Raises:
            DataError: the file does not hold two distinct point numbers of the faces, naming it.
        """
        path = self.nme_points_file
        return read_nme_points(path, self.n_points) if path.is_file() else None

    def resolve_nme_points(
        self, override: tuple[int, int] | None, option: str = "--nme-points"
    ) -> tuple[int, int] | None:
        """``override`` (checked against the faces' points, errors naming ``option``), else ``nme_points``."""
        return check_nme_points(override, self.n_points, option) if override is not None else self.nme_points

    @cached_property
    def train(self) -> Landmarks:
        return read_landmarks(self.train_csv, cache_dir=self.table_cache_dir(self.train_csv))

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
        answers = read_landmarks(self.private_csv, cache_dir=self.table_cache_dir(self.private_csv))
        if answers.n_points != self.n_points:
            raise DataError(f"{self.private_csv}: {answers.n_points} points, the training set has {self.n_points}")
        order = {name: i for i, name in enumerate(answers.file_names)}
        missing = [name for name in self.test.file_names if name not in order]
        if missing:
            raise DataError(f"{self.private_csv}: no answer for test image '{missing[0]}'")
        rows = np.array([order[name] for name in self.test.file_names])
        if np.array_equal(rows, np.arange(len(answers))):  # already in test order: keep the memory map, no copy
            return answers
        return Landmarks(file_names=answers.file_names[rows], points=np.asarray(answers.points)[rows])

    def flip_permutation(self) -> np.ndarray | None:
        """The stored left/right permutation (written by ``kit check``), or None."""
        from kit.data.flip import load_permutation

        return load_permutation(self.flip_file) if self.flip_file.is_file() else None
