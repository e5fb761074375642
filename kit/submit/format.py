"""The submission format: COMMA-separated ``file_name,Point_M0_X,Point_M0_Y,...``, one row per test_points row.

Pair k of a row is the k-th requested point of that row. Coordinates are written as floats: the organisers'
baseline truncated to int, which alone costs about 1/3 px^2 of MSE per coordinate.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kit.data.landmarks import TestPoints, point_columns
from kit.errors import DataError
from kit.io import atomic_path


def read_competition_test_points(data_dir: str | Path) -> TestPoints:
    """The requested test points of a competition folder (``test/test_points.csv``; images are not needed)."""
    from kit.data.competition import Competition

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: competition folder not found")
    return Competition(root).test


def submission_columns(n_requested: int) -> list[str]:
    return ["file_name", *point_columns(n_requested)]


def select_requested(points: np.ndarray, test: TestPoints) -> np.ndarray:
    """Pick each test row's requested points from full (M, P, 2) predictions -> (M, K, 2)."""
    points = np.asarray(points)
    if points.shape[0] != len(test):
        raise ValueError(f"{points.shape[0]} predicted rows for {len(test)} test rows")
    return np.take_along_axis(points, test.indices[:, :, None], axis=1)


def write_submission(path: str | Path, points: np.ndarray, test: TestPoints) -> Path:
    """Write the submission for full test predictions (M, P, 2) in original pixels, atomically."""
    selected = select_requested(points, test)
    if not np.isfinite(selected).all():
        raise ValueError("predictions contain NaN or infinity")
    frame = pd.DataFrame(selected.reshape(len(test), -1).astype(np.float64), columns=point_columns(selected.shape[1]))
    frame.insert(0, "file_name", test.file_names)
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    return path


def read_submission(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # a header shorter than the rows is reported by the validator instead
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            return pd.read_csv(path, sep=",", index_col=False, dtype={"file_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[-1]})") from None


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if not header:
        raise DataError(f"{path}: file is empty")
    return header


def _check_field_counts(path: Path) -> None:
    """Every row has as many fields as the header: pandas (index_col=False) would drop an extra value silently."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty")
        for row in reader:
            if row and len(row) != len(header):
                raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}")


def validate_submission(path: str | Path, test: TestPoints) -> np.ndarray:
    """Check a submission against test_points.csv and return its coordinates (M, K, 2).

    Checks the header, the row count and order, the number of pairs per row and that every value is a finite
    number.

    Raises:
        DataError: naming the file and the first line or column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    expected = submission_columns(test.indices.shape[1])
    got = _read_header(path)
    if got and got[0].startswith("\ufeff"):
        raise DataError(
            f"{path}: starts with a byte-order mark (BOM, U+FEFF) before 'file_name'; save it as UTF-8 without BOM "
            "(kit writes submissions without one)"
        )
    if got != expected:
        if len(got) != len(expected):
            raise DataError(
                f"{path}: header has {len(got)} columns, expected {len(expected)} (file_name + 2 x "
                f"{test.indices.shape[1]} requested points)"
            )
        col = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        shown = f"'{got[col]}'" if got[col].isprintable() else ascii(got[col])  # invisible characters spelled out
        raise DataError(f"{path}: header column {col + 1} is {shown}, expected '{expected[col]}'")
    _check_field_counts(path)
    frame = read_submission(path)
    if len(frame) != len(test):
        raise DataError(f"{path}: {len(frame)} rows, test_points.csv has {len(test)}")
    names = frame["file_name"].to_numpy(dtype=str)
    mismatch = np.flatnonzero(names != test.file_names)
    if len(mismatch):
        row = int(mismatch[0])
        raise DataError(f"{path}: line {row + 2}: file_name '{names[row]}', expected '{test.file_names[row]}'")
    values = frame[expected[1:]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(f"{path}: line {row + 2}, column '{expected[col + 1]}': missing or not a finite number")
    return values.reshape(len(frame), -1, 2)
