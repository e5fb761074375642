"""Atomic file writes: an artifact is either absent, the old version, or complete.

A write that fails for a reason the user can fix (a full disk, a read-only or unwritable folder) ends in a
one-line ``WriteError`` naming the file, and leaves no temporary file behind.

Arrays as large as the competition's (3 GB of labels, a run's 3 GB ``oof.npy``) are written (``npy_writer``) and read
(``row_chunks``, ``read_rows``, ``ScatteredReads``) a chunk at a time, and the pages of a memory-mapped one are
released as they are read: a memory map's pages count in a process's resident memory once touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from kit.errors import KitError

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(KitError):
    """An artifact could not be written: full disk, read-only file system or no permission."""


def format_bytes(n: int) -> str:
    """``n`` bytes in decimal units: ``512 B``, ``3.4 MB``, ``1.2 GB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (or of its nearest existing parent), or None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            if folder.exists():
                return shutil.disk_usage(folder).free
    return None


def no_space_error(path: str | Path, needed: int | None = None, free: int | None = None) -> WriteError:
    """``PATH: no space left on device (needed ~N MB, free M MB)``; the free space is measured when not given."""
    free = free_bytes(path) if free is None else free
    details = [f"needed ~{format_bytes(needed)}"] if needed else []
    details += [f"free {format_bytes(free)}"] if free is not None else []
    return WriteError(f"{path}: {_CAUSES[errno.ENOSPC]}" + (f" ({', '.join(details)})" if details else ""))


def write_error(path: str | Path, exc: OSError, needed: int | None = None) -> WriteError | None:
    """The one-line error for a failed write of ``path``, or None when ``exc`` is not a full disk or a permission.

    Args:
        path: the file (or folder) being written, as the message names it.
        exc: what the write raised.
        needed: bytes the write needs, where known (a full disk's message gives it with the free space).
    """
    cause = _CAUSES.get(exc.errno)
    if cause is None:
        return None
    if exc.errno == errno.ENOSPC:
        return no_space_error(path, needed)
    return WriteError(f"{path}: {cause}")


def _is_about(exc: OSError, paths: tuple[Path, ...]) -> bool:
    """Whether ``exc`` concerns one of ``paths`` (an error without a file name comes from writing an open file)."""
    return exc.filename is None or Path(os.fsdecode(exc.filename)) in paths


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it is renamed onto ``path`` only if the block succeeds.

    The temporary file is removed whatever happens.

    Args:
        path: the artifact.
        needed: its size in bytes where known, for the message of a full disk.

    Raises:
        WriteError: the disk is full, the folder is read-only or not writable (``PATH: no space left on device
            (needed ~N MB, free M MB)``, ``PATH: read-only file system``, ...); other errors propagate unchanged.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        with _mapped(path, needed):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
        tmp_path = Path(tmp)
        with _mapped(path, needed, tmp_path, (tmp_path, path)):
            yield tmp_path
        with _mapped(path, needed, tmp_path):
            # mkstemp creates 0600 files; give the artifact the permissions of a normally created file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _mapped(path: Path, needed: int | None, tmp: Path | None = None, about: tuple[Path, ...] | None = None):
    """Turn an OSError of writing ``path`` into its ``WriteError``, removing ``tmp`` first (it takes disk space).

    With ``about``, only errors without a file name or naming one of those paths are taken as the write's.
    """
    try:
        yield
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        error = write_error(path, exc, needed) if about is None or _is_about(exc, about) else None
        if error is None:
            raise
        raise error from None


def write_text(path: str | Path, text: str) -> None:
    data = text.encode()
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, needed=np.asarray(array).nbytes + 128) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@contextlib.contextmanager
def npy_writer(path: str | Path, shape: tuple[int, ...], dtype=np.float32) -> Iterator[Callable[[np.ndarray], None]]:
    """Write the ``.npy`` array ``path`` of ``shape`` block by block of rows, atomically: yields ``write(block)``.

    Memory stays at one block whatever the array's size; the file appears once every row is written.

    Raises:
        ValueError: a block does not fit the shape, or the blocks do not fill it.
        WriteError: as ``atomic_path``.
    """
    shape, dtype = tuple(int(v) for v in shape), np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    written = 0

    def write(block: np.ndarray) -> None:
        nonlocal written
        block = np.ascontiguousarray(block, dtype=dtype)
        if block.shape[1:] != shape[1:] or written + len(block) > shape[0]:
            raise ValueError(f"{path}: a block of shape {block.shape} after {written} rows does not fit {shape}")
        f.write(block.data)
        written += len(block)

    with atomic_path(path, needed=int(np.prod(shape)) * dtype.itemsize + 128) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        yield write
        if written != shape[0]:
            raise ValueError(f"{path}: {written} of {shape[0]} rows written")


_FAULT_AROUND = max(mmap.PAGESIZE, 64 << 10)  # Linux's default fault_around_bytes (large folios may map more)


def _shared_mapping(array: np.ndarray) -> mmap.mmap | None:
    """The shared file mapping ``array`` is a view of (``np.memmap`` or ``np.load(mmap_mode=...)``), or None."""
    owner = array
    while owner is not None:
        mapping = getattr(owner, "_mmap", None)
        if mapping is not None:
            return mapping if getattr(owner, "mode", "c") != "c" else None  # copy-on-write pages hold the edits
        owner = owner.base if isinstance(owner, np.ndarray) else None
    return None


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped ``array`` from this process's resident memory; nothing for other arrays.

    A pass over a memory-mapped file otherwise keeps every page it read resident (3 GB for full-size labels). The
    pages stay in the page cache, and the mapping stays valid: reading them again maps them back.
    """
    mapping = _shared_mapping(array)
    if mapping is None or array.size == 0 or not hasattr(mapping, "madvise"):
        return
    try:
        start = np.frombuffer(mapping, np.uint8, count=1).ctypes.data
    except ValueError:  # a closed mapping
        return
    low, high = np.lib.array_utils.byte_bounds(array)
    # A page fault maps the aligned 64 KiB around it ("fault-around"): release whole such windows, or reading the
    # next row maps the released pages of this one back.
    first = (low - start) // _FAULT_AROUND * _FAULT_AROUND
    last = min(len(mapping), -(-(high - start) // _FAULT_AROUND) * _FAULT_AROUND)
    mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


CHUNK_BYTES = 32 << 20  # bytes of rows read at once by ``row_chunks``


def rows_in(row_bytes: int, chunk_bytes: int) -> int:
    """Rows in a chunk of about ``chunk_bytes`` at ``row_bytes`` a row, at least one."""
    return max(1, chunk_bytes // max(1, row_bytes))


def chunk_rows(array: np.ndarray, chunk_bytes: int | None = None) -> int:
    """Rows of ``array`` in about ``chunk_bytes`` (default ``CHUNK_BYTES``), at least one."""
    return rows_in(array.itemsize * int(np.prod(array.shape[1:])), chunk_bytes or CHUNK_BYTES)


def read_rows(array: np.ndarray, rows, dtype=None) -> np.ndarray:
    """``array[rows]`` copied into memory (as ``dtype`` if given); a memory-mapped array's pages are released.

    A list of rows is gathered in chunks, so at most a chunk's pages are resident at once.
    """
    array = np.asanyarray(array)
    if isinstance(rows, list | np.ndarray) and np.ndim(rows) == 1:
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.intp)
        out = np.empty((len(rows), *array.shape[1:]), dtype=dtype or array.dtype)
        step = chunk_rows(array)
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            out[start : start + len(part)] = array[part]
            release_pages(array[part.min() : part.max() + 1])
        return out
    view = array[rows]
    block = np.array(view, dtype=dtype)
    release_pages(view if np.may_share_memory(view, array) else array)  # a copying index: release them all
    return block


def _npy_file(array: np.ndarray) -> tuple[str, int] | None:
    """(path, offset of the first row) of a whole ``.npy`` file memory-mapped as ``array``, else None."""
    if not (isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous and hasattr(os, "preadv")):
        return None
    try:
        whole = array.offset + array.nbytes == os.path.getsize(array.filename)  # not a view of part of it
    except OSError:
        return None
    return (array.filename, array.offset) if whole else None


class ScatteredReads:
    """Rows of an array in any order, as in-memory copies; a memory-mapped ``.npy`` file's rows are read with
    ``pread``, which maps nothing.

    Reading a memory map keeps every page it touched resident (in each loader worker: a whole crop cache over an
    epoch), and releasing the pages read by read costs more than small reads (a crop, a face's labels).
    """

    def __init__(self, array: np.ndarray):
        self.array = array
        self._file = _npy_file(array)
        self._fd: int | None = None  # opened by the process that reads (each loader worker its own)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index) -> np.ndarray:
        """Row ``index``, or the rows of an array of indices."""
        if self._file is None:
            return np.array(self.array[index])
        rows = np.asarray(index, dtype=np.int64)
        out = np.empty((*rows.shape, *self.array.shape[1:]), dtype=self.array.dtype)
        flat = out.reshape(rows.size, -1)
        for i, row in enumerate(rows.reshape(-1).tolist()):
            self._read(flat[i], row)
        return out

    def _read(self, out: np.ndarray, row: int) -> None:
        n = len(self.array)
        if not -n <= row < n:
            raise IndexError(f"row {row} out of range for {n} rows")
        if self._fd is None:
            self._fd = os.open(self._file[0], os.O_RDONLY)
        if os.preadv(self._fd, [out], self._file[1] + (row % n) * out.nbytes) != out.nbytes:
            raise OSError(f"{self._file[0]}: truncated at row {row}")


def row_chunks(array: np.ndarray, rows: int | None = None, dtype=None) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, array[rows])`` for consecutive chunks of rows, each an in-memory copy (as ``dtype`` if given).

    A memory-mapped array's pages are released after each chunk (``release_pages``), so a pass over the whole
    array holds one chunk.

    Args:
        rows: rows per chunk (default: ``chunk_rows(array)``).
    """
    rows = rows or chunk_rows(array)
    for start in range(0, len(array), rows):
        where = slice(start, min(len(array), start + rows))
        yield where, read_rows(array, where, dtype)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_output_folder(path: str | Path, what: str) -> None:
    """Refuse an output folder that cannot be created or written, before anything is written.

    Args:
        path: the folder (it need not exist yet).
        what: how the message names it, e.g. ``--out``.

    Raises:
        KitError: a file stands where the folder or one of its parents should be.
        WriteError: the folder (or its nearest existing parent) is on a read-only file system or not writable.
    """
    path = Path(path)
    absolute = path.absolute()
    existing = next(p for p in (absolute, *absolute.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise KitError(f"{what} {path}: {existing} is a file, not a folder; choose another {what}")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise WriteError(f"{what} {path}: {_CAUSES[errno.EROFS]} ({existing}); choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{what} {path}: {_CAUSES[errno.EACCES]} ({existing}); choose another {what}")


def refuse_inside(path: str | Path, root: str | Path, what: str, root_what: str = "the competition folder") -> None:
    """Refuse an output location that is ``root`` or inside it (both resolved; ``path`` need not exist yet).

    Args:
        path: where outputs would go.
        root: a folder that outputs must not be written into.
        what: how the message names ``path``, e.g. ``--out-dir``.
        root_what: how the message names ``root``.

    Raises:
        KitError: e.g. ``--out-dir data/train: inside the competition folder data; write outputs elsewhere``.
    """
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved == base or base in resolved.parents:
        raise KitError(f"{what} {path}: inside {root_what} {root}; write outputs elsewhere")


def swap_in_folder(tmp: str | Path, out_dir: str | Path) -> None:
    """Move the complete folder ``tmp`` onto ``out_dir``; an old ``out_dir`` is removed only once it is replaced."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = tmp.with_suffix(".old")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)  # put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_json_record(path: str | Path, model, what: str, remedy: str = ""):
    """``path``'s JSON validated as the pydantic ``model``.

    Raises:
        KitError: ``PATH: unreadable (...)`` or ``PATH: WHAT (key 'K': reason)``, then ``; REMEDY`` if given.
    """
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        return model.model_validate(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"{path}: unreadable ({type(exc).__name__}: {exc}){tail}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise KitError(f"{path}: {what} (key '{key}': {first['msg']}){tail}") from None
