"""Exact, validated, cached reading of ``landmarks.csv`` and ``test_points.csv``.

The number of points always comes from the header. Parsing uses pandas' C parser on the fast path;
when it finds something wrong, a slower pass over the raw lines names the offending row and column.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.io import save_npy

FILE_COLUMN = "file_name"
INDEX_LIST_COLUMN = "point_index_list"
CACHE_VERSION = 1


def point_columns(n_points: int) -> list[str]:
    """Column names ``Point_M0_X, Point_M0_Y, ...`` for ``n_points`` points."""
    return [f"Point_M{i}_{axis}" for i in range(n_points) for axis in ("X", "Y")]


@dataclass(frozen=True)
class Landmarks:
    """Training landmarks: one row per image, in file order."""

    file_names: np.ndarray  # (N,) str
    points: np.ndarray  # (N, P, 2) float32, original-image pixels

    @property
    def n_points(self) -> int:
        return self.points.shape[1]

    def __len__(self) -> int:
        return len(self.file_names)


@dataclass(frozen=True)
class TestPoints:
    """The requested points of each test image, in file order."""

    file_names: np.ndarray  # (M,) str
    indices: np.ndarray  # (M, K) int64

    def __len__(self) -> int:
        return len(self.file_names)


def _n_points_from_header(path: Path, header: list[str]) -> int:
    if not header or header[0] != FILE_COLUMN:
        raise DataError(f"{path}: header must start with '{FILE_COLUMN}', found {header[:1]}")
    coords = header[1:]
    if len(coords) == 0 or len(coords) % 2:
        raise DataError(f"{path}: header has {len(header)} columns, expected 1 + 2 x points")
    expected = point_columns(len(coords) // 2)
    for col, (got, want) in enumerate(zip(coords, expected, strict=True), start=2):
        if got != want:
            raise DataError(f"{path}: header column {col} is '{got}', expected '{want}'")
    return len(coords) // 2


def _read_header(path: Path, sep: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, newline="") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise DataError(f"{path}: file is empty")
    return line.split(sep)


def _diagnose_rows(path: Path, header: list[str], numeric_from: int) -> None:
    """Scan the raw lines and raise a DataError for the first bad row (slow; only called after a failure)."""
    n_cols = len(header)
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for line_no, row in enumerate(reader, start=2):
            if len(row) == n_cols + 1 and row[-1] == "":
                row = row[:-1]  # a trailing tab is tolerated
            if len(row) != n_cols:
                raise DataError(f"{path}: line {line_no} has {len(row)} columns, expected {n_cols}")
            for col in range(numeric_from, n_cols):
                value = row[col].strip()
                if value == "":
                    raise DataError(f"{path}: line {line_no}, column '{header[col]}': missing value")
                try:
                    number = float(value)
                except ValueError:
                    raise DataError(f"{path}: line {line_no}, column '{header[col]}': not a number: {value!r}") from None
                if not np.isfinite(number):
                    raise DataError(f"{path}: line {line_no}, column '{header[col]}': not finite: {value!r}")
            if row[0].strip() == "":
                raise DataError(f"{path}: line {line_no}: empty file_name")


def _check_unique(path: Path, file_names: np.ndarray) -> None:
    names = pd.Series(file_names)
    dup = names.duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{path}: line {first + 2}: duplicate file_name '{file_names[first]}'")


def _cache_key(path: Path) -> str:
    stat = path.stat()
    ident = f"v{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _parse_landmarks(path: Path) -> Landmarks:
    header = _read_header(path, "\t")
    n_points = _n_points_from_header(path, header)
    dtypes = {FILE_COLUMN: str} | {c: np.float32 for c in header[1:]}
    try:
        frame = pd.read_csv(path, sep="\t", index_col=False, dtype=dtypes, engine="c", keep_default_na=True)
    except (ValueError, pd.errors.ParserError):
        _diagnose_rows(path, header, numeric_from=1)
        raise
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    values = frame[header[1:]].to_numpy(dtype=np.float32)
    if frame[FILE_COLUMN].isna().any() or not np.isfinite(values).all():
        _diagnose_rows(path, header, numeric_from=1)
    file_names = frame[FILE_COLUMN].to_numpy(dtype=str)
    _check_unique(path, file_names)
    return Landmarks(file_names=file_names, points=values.reshape(len(frame), n_points, 2))


def read_landmarks(path: str | Path, cache_dir: str | Path | None = None, use_cache: bool = True) -> Landmarks:
    """Read and validate a ``landmarks.csv`` (TAB-separated ``file_name, Point_M0_X, ...``).

    Parsed arrays are cached as ``.npy`` in ``cache_dir`` (default: ``.kit_cache`` beside the file), keyed by
    the file's path, size and modification time, so a changed file is parsed again. The cached points are
    memory-mapped, so a reload costs milliseconds whatever the size.

    Raises:
        DataError: naming the file and the line or column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not use_cache:
        return _parse_landmarks(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else path.parent / ".kit_cache"
    stem = f"{path.stem}-{_cache_key(path)}"
    points_file, names_file = cache_dir / f"{stem}.points.npy", cache_dir / f"{stem}.names.npy"
    if points_file.is_file() and names_file.is_file():
        return Landmarks(file_names=np.load(names_file), points=np.load(points_file, mmap_mode="r"))
    landmarks = _parse_landmarks(path)
    try:
        save_npy(names_file, landmarks.file_names)
        save_npy(points_file, landmarks.points)
    except OSError:
        pass  # a read-only data folder only loses the cache
    return landmarks


_INT_LIST = re.compile(r"^\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?,?\s*\]$")


def read_test_points(path: str | Path, n_points: int) -> TestPoints:
    """Read and validate ``test_points.csv`` (TAB-separated ``file_name``, ``point_index_list``).

    Every row must list the same number of indices, each in ``[0, n_points)``.
    """
    path = Path(path)
    header = _read_header(path, "\t")
    if header != [FILE_COLUMN, INDEX_LIST_COLUMN]:
        raise DataError(f"{path}: header must be '{FILE_COLUMN}\\t{INDEX_LIST_COLUMN}', found {header}")
    try:
        frame = pd.read_csv(path, sep="\t", index_col=False, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: {str(exc).strip().splitlines()[-1]}") from None
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    lists = frame[INDEX_LIST_COLUMN].str.strip()
    indices: list[np.ndarray] = []
    for row, text in enumerate(lists):
        if not _INT_LIST.match(text):
            raise DataError(f"{path}: line {row + 2}: point_index_list is not a list of integers: {text[:60]!r}")
        values = np.array([int(v) for v in text.strip("[],").split(",") if v.strip()], dtype=np.int64)
        if indices and len(values) != len(indices[0]):
            raise DataError(f"{path}: line {row + 2}: {len(values)} indices, expected {len(indices[0])} as on line 2")
        bad = (values < 0) | (values >= n_points)
        if bad.any():
            raise DataError(f"{path}: line {row + 2}: point index {values[bad][0]} out of range [0, {n_points})")
        indices.append(values)
    if len(indices[0]) == 0:
        raise DataError(f"{path}: line 2: empty point_index_list")
    file_names = frame[FILE_COLUMN].to_numpy(dtype=str)
    if (frame[FILE_COLUMN].str.strip() == "").any():
        row = int(np.flatnonzero((frame[FILE_COLUMN].str.strip() == "").to_numpy())[0])
        raise DataError(f"{path}: line {row + 2}: empty file_name")
    _check_unique(path, file_names)
    return TestPoints(file_names=file_names, indices=np.stack(indices))
