"""Exact, validated, cached reading of ``landmarks.csv`` and ``test_points.csv``.

The number of points always comes from the header. ``landmarks.csv`` is cut into pieces at line ends, parsed by
pandas' C parser on all cores and streamed into a ``.npy`` cache, which is memory-mapped on reload. When the fast
path finds anything wrong, a slower pass over the raw lines names the offending line and column. The points' hash
(``Landmarks.digest``, the labels' fingerprint in a run's identity) is computed while the cache is written and
kept beside it, so a reload does not read the points again.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
import struct
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.io import WriteError, atomic_path, save_npy, write_text

FILE_COLUMN = "file_name"
INDEX_LIST_COLUMN = "point_index_list"
CACHE_VERSION = 2
# Catches a non-empty field after the last header column: with index_col=False pandas drops it silently.
_EXTRA_COLUMN = "\x00extra"
_BLOCK_ROWS = 1024
_PIECE_BYTES = 32 << 20
_WORKERS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_NPY_HEADER_BYTES = 128
_FINGERPRINT_WHOLE = 1 << 20
_FINGERPRINT_BLOCK = 1 << 12
_FINGERPRINT_BLOCKS = 64


def point_columns(n_points: int) -> list[str]:
    """Column names ``Point_M0_X, Point_M0_Y, ...`` for ``n_points`` points."""
    return [f"Point_M{i}_{axis}" for i in range(n_points) for axis in ("X", "Y")]


@dataclass(frozen=True)
class Landmarks:
    """Training landmarks: one row per image, in file order."""

    file_names: np.ndarray  # (N,) str
    points: np.ndarray  # (N, P, 2) float32, original-image pixels; read-only (memory-mapped when cached)
    points_sha256: str | None = None  # the points' hash when known (kept with the cache); see ``digest``

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the float32 points in row order and their shape: what a model is trained to predict."""
        return self.points_sha256 or points_digest(self.points)

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


def _read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise DataError(f"{path}: file is empty (expected a header line)")
    return line.split("\t")


def _n_points_from_header(path: Path, header: list[str]) -> int:
    if header[0] != FILE_COLUMN:
        found = header[0][:40]
        where = f"{path}: line 1, column 1"
        raise DataError(f"{where}: header must start with '{FILE_COLUMN}' (TAB-separated), found {found!r}")
    coords = header[1:]
    if len(coords) == 0 or len(coords) % 2:
        raise DataError(f"{path}: line 1: header has {len(header)} columns, expected 1 + 2 x points")
    expected = point_columns(len(coords) // 2)
    for col, (got, want) in enumerate(zip(coords, expected, strict=True), start=2):
        if got != want:
            raise DataError(f"{path}: line 1, column {col}: header is {got[:40]!r}, expected '{want}'")
    return len(coords) // 2


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)


def _check_row(path: Path, line_no: int, row: list[str], header: list[str]) -> None:
    """Raise a DataError for the first defect of one raw row of ``landmarks.csv``."""
    n_cols = len(header)
    if len(row) == n_cols + 1 and row[-1] == "":
        row = row[:-1]  # a trailing TAB is tolerated, as pandas does
    if len(row) != n_cols:
        raise DataError(f"{path}: line {line_no} has {len(row)} columns, expected {n_cols}")
    if row[0] == "":
        raise DataError(f"{path}: line {line_no}, column '{FILE_COLUMN}': empty file name")
    try:
        row[0].encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path}: line {line_no}, column '{FILE_COLUMN}': not valid UTF-8") from None
    values = row[1:]
    joined = "\t".join(values)
    if joined.isascii() and "_" not in joined:  # numpy accepts digit separators and non-ASCII digits; pandas doesn't
        try:
            if (np.abs(np.asarray(values, dtype=np.float64)) <= _FLOAT32_MAX).all():
                return
        except ValueError:
            pass
    for col in range(1, n_cols):
        value = row[col]
        where = f"{path}: line {line_no}, column '{header[col]}'"
        if value.strip() == "":
            raise DataError(f"{where}: missing value")
        if not _NUMBER.fullmatch(value):
            raise DataError(f"{where}: not a number: {value[:40]!r}")
        if not abs(float(value)) <= _FLOAT32_MAX:
            raise DataError(f"{where}: out of range: {value[:40]!r}")


def _diagnose(path: Path, header: list[str], reason: str) -> NoReturn:
    """Scan the raw lines and raise a DataError naming the first bad row (slow: only called after a failure)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            next(reader)
            for row in reader:
                if row:  # pandas skips blank lines
                    _check_row(path, reader.line_num, row, header)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from None
    raise DataError(f"{path}: cannot be parsed as a TAB-separated table ({reason})")


def _raise_duplicate(path: Path) -> NoReturn:
    """Raise a DataError naming the physical lines of the first repeated file name."""
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        next(f)
        for line_no, line in enumerate(f, start=2):
            name = line.split("\t", 1)[0].rstrip("\r\n")
            if not name:
                continue
            if name in seen:
                raise DataError(f"{path}: line {line_no}: duplicate file_name '{name}' (first on line {seen[name]})")
            seen[name] = line_no
    raise DataError(f"{path}: duplicate file names")


def _check_unique(path: Path, file_names: np.ndarray) -> None:
    if pd.Series(file_names).duplicated().any():
        _raise_duplicate(path)


def _piece_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the data lines, cut at line ends into pieces of about ``_PIECE_BYTES``."""
    size = path.stat().st_size
    ranges = []
    with open(path, "rb") as f:
        start = len(f.readline())
        while start < size:
            stop = min(size, start + _PIECE_BYTES)
            if stop < size:
                f.seek(stop)
                stop += len(f.readline())
            ranges.append((start, stop))
            start = stop
    return ranges


def _parse_piece(path: Path, byte_range: tuple[int, int], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """File names (n,) and coordinates (n, 2P) float32, in any memory order, of one piece of the file.

    Raises:
        ValueError: anything wrong in the piece (pandas' own errors are ValueErrors too).
    """
    with open(path, "rb") as f:
        f.seek(byte_range[0])
        data = f.read(byte_range[1] - byte_range[0])
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            header=None,
            names=names,
            index_col=False,
            dtype=np.float32,
            converters={FILE_COLUMN: str, _EXTRA_COLUMN: str},
            na_filter=False,  # an empty field fails the float conversion instead of becoming NaN
            quoting=csv.QUOTE_NONE,
            engine="c",
        )
    except pd.errors.EmptyDataError:  # only blank lines, which pandas skips
        return np.empty(0, dtype=str), np.empty((0, len(names) - 2), dtype=np.float32)
    file_names = frame[FILE_COLUMN].to_numpy(dtype=str)
    if (frame[_EXTRA_COLUMN].to_numpy(dtype=str) != "").any() or (file_names == "").any():
        raise ValueError("an extra field or an empty file name")
    # One dtype for every parsed column puts the coordinates in one block: this is a view, not a copy.
    return file_names, frame.iloc[:, 1:-1].to_numpy(dtype=np.float32)


def _pieces(path: Path, header: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Parse the data lines piece by piece on all cores, yielding ``_parse_piece`` results in file order.

    Streaming keeps the memory to a few pieces instead of pandas' ~3x the parsed size for a whole-file read,
    and pandas' C parser releases the GIL while it tokenises and converts, so the threads run in parallel.
    """
    names = [*header, _EXTRA_COLUMN]
    ranges = iter(_piece_ranges(path))
    with warnings.catch_warnings(), ThreadPoolExecutor(_WORKERS) as pool:
        # "Both a converter and dtype were specified": the converters win for the string columns, as intended.
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        pending: deque[Future] = deque(pool.submit(_parse_piece, path, r, names) for r in islice(ranges, _WORKERS + 1))
        try:
            while pending:
                try:
                    result = pending.popleft().result()
                except ValueError as exc:  # includes pandas' ParserError and UnicodeDecodeError
                    pool.shutdown(wait=True, cancel_futures=True)
                    _diagnose(path, header, str(exc).strip().splitlines()[-1][:200])
                for byte_range in islice(ranges, 1):
                    pending.append(pool.submit(_parse_piece, path, byte_range, names))
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _row_blocks(coords: np.ndarray) -> Iterator[np.ndarray]:
    """C-ordered copies of consecutive rows of ``coords`` (a reused buffer: consume each before the next)."""
    n_rows, n_cols = coords.shape
    buffer = np.empty((min(_BLOCK_ROWS, n_rows), n_cols), dtype=np.float32)
    for start in range(0, n_rows, _BLOCK_ROWS):
        block = buffer[: min(n_rows, start + _BLOCK_ROWS) - start]
        if coords.flags.f_contiguous:
            # pandas stores columns contiguously; cv2's tiled transpose is ~5x faster than numpy's strided copy.
            result = cv2.transpose(coords[start : start + len(block)].T, block)
            if not np.shares_memory(result, block):
                block[:] = result
        else:
            block[:] = coords[start : start + len(block)]
        yield block


def _stream(path: Path, sink: Callable[[np.ndarray], object]) -> np.ndarray:
    """Parse and validate ``landmarks.csv``, passing C-ordered (rows, 2P) blocks to ``sink``; return the names."""
    header = _read_header(path)
    _n_points_from_header(path, header)
    names = []
    for file_names, coords in _pieces(path, header):
        names.append(file_names)
        for block in _row_blocks(coords):
            if not np.isfinite(block).all():
                _diagnose(path, header, "a value is not finite")
            sink(block)
    file_names = np.concatenate(names) if names else np.empty(0, dtype=str)
    if len(file_names) == 0:
        raise DataError(f"{path}: no data rows")
    _check_unique(path, file_names)
    return file_names


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A fixed-size ``.npy`` (version 1.0) header for float32 C-ordered data, so it can be written last."""
    text = f"{{'descr': '{np.lib.format.dtype_to_descr(np.dtype(np.float32))}', 'fortran_order': False, "
    text += f"'shape': {tuple(int(v) for v in shape)}, }}"
    text = text.ljust(_NPY_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _shape_suffix(n_rows: int, n_points: int) -> bytes:
    return f"|{n_rows}x{n_points}".encode()


def points_digest(points: np.ndarray) -> str:
    """sha256 of (N, P, 2) points as C-ordered float32, then their shape (``Landmarks.digest``)."""
    points = np.asarray(points)
    digest = hashlib.sha256()
    for start in range(0, len(points), _BLOCK_ROWS):
        digest.update(np.ascontiguousarray(points[start : start + _BLOCK_ROWS], dtype=np.float32).data)
    digest.update(_shape_suffix(len(points), points.shape[1]))
    return digest.hexdigest()


def _write_cache(path: Path, points_file: Path) -> tuple[np.ndarray, str]:
    """Stream the parsed points into ``points_file`` (N, P, 2) float32; return the file names and the points' hash."""
    digest = hashlib.sha256()

    def sink(block: np.ndarray) -> None:
        f.write(block.data)
        digest.update(block.data)

    with atomic_path(points_file) as tmp, open(tmp, "wb") as f:
        f.write(b"\0" * _NPY_HEADER_BYTES)  # the row count is known only at the end
        file_names = _stream(path, sink)
        n_values = (f.tell() - _NPY_HEADER_BYTES) // 4
        n_points = n_values // len(file_names) // 2
        f.seek(0)
        f.write(_npy_header((len(file_names), n_points, 2)))
    digest.update(_shape_suffix(len(file_names), n_points))
    return file_names, digest.hexdigest()


def _fingerprint(path: Path, size: int) -> str:
    """Hash of the whole file when small, else of 64 blocks spread over it (a few ms, even for 3 GB).

    The modification time alone misses a same-size rewrite within one tick of the kernel's coarse clock.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _FINGERPRINT_WHOLE:
            digest.update(f.read())
        else:
            for offset in np.linspace(0, size - _FINGERPRINT_BLOCK, _FINGERPRINT_BLOCKS).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(_FINGERPRINT_BLOCK))
    return digest.hexdigest()


def _cache_stem(path: Path) -> tuple[str, str]:
    """(prefix shared by every version of this file's cache, full stem of the current version)."""
    stat = path.stat()
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    ident = f"v{CACHE_VERSION}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{_fingerprint(path, stat.st_size)}"
    prefix = f"{path.stem}-{where}-"
    return prefix, prefix + hashlib.sha256(ident.encode()).hexdigest()[:12]


def _load_cached(names_file: Path, points_file: Path, digest_file: Path) -> Landmarks | None:
    if not (points_file.is_file() and names_file.is_file()):
        return None
    try:
        file_names = np.load(names_file)
        points = np.load(points_file, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if points.ndim != 3 or points.shape[2] != 2 or len(points) != len(file_names):
        return None
    try:
        digest = digest_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        digest = ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):  # a cache of an older kit: hash the points once, keep the hash
        digest = points_digest(points)
        try:
            write_text(digest_file, digest + "\n")
        except (OSError, WriteError):
            pass
    return Landmarks(file_names=file_names, points=points, points_sha256=digest)


def _parse_landmarks(path: Path) -> Landmarks:
    """Parse without any cache; the points come back read-only, like a cached reload."""
    blocks: list[np.ndarray] = []
    file_names = _stream(path, lambda block: blocks.append(block.copy()))
    points = np.concatenate(blocks).reshape(len(file_names), -1, 2)
    points.flags.writeable = False
    return Landmarks(file_names=file_names, points=points)


def read_landmarks(path: str | Path, cache_dir: str | Path | None = None, use_cache: bool = True) -> Landmarks:
    """Read and validate a ``landmarks.csv`` (TAB-separated ``file_name, Point_M0_X, ...``).

    Parsed arrays are cached as ``.npy`` in ``cache_dir`` (default: ``.kit_cache`` beside the file; a
    ``Competition`` passes one in its workspace), keyed by the file's path, size, modification time, inode and a
    content fingerprint, so a changed file is parsed again (and its stale cache removed). The cached points are
    memory-mapped, so a reload costs milliseconds whatever the size. The points are read-only either way; a cache
    folder that cannot be written (read-only, full) only loses the cache.

    Raises:
        DataError: naming the file and the line or column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not use_cache:
        return _parse_landmarks(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else path.parent / ".kit_cache"
    prefix, stem = _cache_stem(path)
    names_file, points_file = cache_dir / f"{stem}.names.npy", cache_dir / f"{stem}.points.npy"
    digest_file = cache_dir / f"{stem}.points.sha256"
    cached = _load_cached(names_file, points_file, digest_file)
    if cached is not None:
        return cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*cache_dir.glob(f"{prefix}*.npy"), *cache_dir.glob(f"{prefix}*.sha256")]:
            if not stale.name.startswith(stem):
                stale.unlink(missing_ok=True)
        file_names, digest = _write_cache(path, points_file)
        write_text(digest_file, digest + "\n")
        save_npy(names_file, file_names)
    except (OSError, WriteError):
        return _parse_landmarks(path)  # a read-only cache folder, or a full disk, only loses the cache
    return Landmarks(file_names=file_names, points=np.load(points_file, mmap_mode="r"), points_sha256=digest)


_INT_LIST = re.compile(r"\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?\]", re.ASCII)
_LIST_PUNCTUATION = str.maketrans("[],", "   ")


def read_test_points(path: str | Path, n_points: int) -> TestPoints:
    """Read and validate ``test_points.csv`` (TAB-separated ``file_name``, ``point_index_list``).

    ``point_index_list`` is a list literal such as ``[5, 17, 250]``. Every row must list the same number of
    distinct indices, each in ``[0, n_points)``.

    Raises:
        DataError: naming the file and the line or column at fault.
    """
    path = Path(path)
    header = _read_header(path)
    if header != [FILE_COLUMN, INDEX_LIST_COLUMN]:
        raise DataError(f"{path}: line 1: header must be '{FILE_COLUMN}<TAB>{INDEX_LIST_COLUMN}', found {header}")
    names: list[str] = []
    lists: list[str] = []
    lines: list[int] = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        next(f)
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue  # as pandas does
            row = line.split("\t")
            if len(row) == 3 and row[2] == "":
                row = row[:2]  # a trailing TAB is tolerated
            if len(row) != 2:
                raise DataError(f"{path}: line {line_no} has {len(row)} columns, expected 2")
            name, text = row[0], row[1].strip()
            if name == "":
                raise DataError(f"{path}: line {line_no}, column '{FILE_COLUMN}': empty file name")
            if not _INT_LIST.fullmatch(text):
                raise DataError(
                    f"{path}: line {line_no}, column '{INDEX_LIST_COLUMN}': not a list of integers: {text[:60]!r}"
                )
            names.append(name)
            lists.append(text)
            lines.append(line_no)
    if not names:
        raise DataError(f"{path}: no data rows")
    counts = np.array([text.count(",") + 1 if any(c.isdigit() for c in text) else 0 for text in lists])
    if counts[0] == 0:
        raise DataError(f"{path}: line {lines[0]}, column '{INDEX_LIST_COLUMN}': empty list")
    wrong = np.flatnonzero(counts != counts[0])
    if len(wrong):
        row = int(wrong[0])
        raise DataError(
            f"{path}: line {lines[row]}, column '{INDEX_LIST_COLUMN}': {counts[row]} indices, "
            f"expected {counts[0]} as on line {lines[0]}"
        )
    flat = " ".join(lists).translate(_LIST_PUNCTUATION).split()
    # Big enough for any index and small enough that no integer literal overflows the conversion.
    flat = [v if len(v) < 12 else "-1" for v in flat]
    indices = np.array(flat, dtype=np.int64).reshape(len(names), -1)
    bad = (indices < 0) | (indices >= n_points)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        value = lists[row].translate(_LIST_PUNCTUATION).split()[col]
        raise DataError(
            f"{path}: line {lines[row]}, column '{INDEX_LIST_COLUMN}': point index {value} out of range [0, {n_points})"
        )
    ordered = np.sort(indices, axis=1)
    repeated = ordered[:, 1:] == ordered[:, :-1]
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        value = int(ordered[row, 1:][repeated[row]][0])
        raise DataError(f"{path}: line {lines[row]}, column '{INDEX_LIST_COLUMN}': point index {value} listed twice")
    file_names = np.array(names, dtype=str)
    if pd.Series(file_names).duplicated().any():
        _raise_duplicate(path)
    return TestPoints(file_names=file_names, indices=indices)
