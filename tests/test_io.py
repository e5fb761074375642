"""Atomic writes: a full disk or a read-only folder ends in one line naming the file, and leaves no temp file."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import kit.io
from kit.errors import KitError
from kit.io import (
    ScatteredReads,
    WriteError,
    atomic_path,
    chunk_rows,
    format_bytes,
    free_bytes,
    npy_writer,
    read_rows,
    release_pages,
    row_chunks,
    save_npy,
    write_json,
    write_text,
)

AS_ROOT = os.geteuid() == 0
ROOT_REASON = "running as root: chmod does not stop root's writes (the faked EROFS tests cover this path)"


def _usage(free: int):
    return shutil._ntuple_diskusage(total=10**12, used=10**12 - free, free=free)


@pytest.fixture
def little_space(monkeypatch):
    """The disk reports 1,000 bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _usage(1000))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 2_500_000, 3 * 10**9)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "2.5 MB",
        "3.0 GB",
    ]


def test_free_bytes_of_a_path_not_created_yet(tmp_path):
    assert free_bytes(tmp_path / "a" / "b" / "c.txt") == shutil.disk_usage(tmp_path).free


def test_write_keeps_the_permissions_of_a_normal_file(tmp_path):
    write_text(tmp_path / "sub" / "a.txt", "hello")
    mode = (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello" and mode == 0o666 & ~umask
    assert os.listdir(tmp_path / "sub") == ["a.txt"]


def test_full_disk_midway_names_the_file_and_the_space(tmp_path, monkeypatch, little_space):
    target = tmp_path / "a.json"
    target.write_text("old")

    def half_then_full(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(WriteError) as caught:
        write_json(target, {"x": "y" * 3000})
    message = str(caught.value)
    assert message.startswith(f"{target}: no space left on device (needed ~3.0 kB, free 1.0 kB)"), message
    assert "\n" not in message and isinstance(caught.value, KitError)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]  # the old version, no temp


def test_full_disk_in_np_save_leaves_nothing(tmp_path, monkeypatch, little_space):
    def partial(f, array, *args, **kwargs):
        f.write(b"\x93NUMPY partial")
        _enospc()

    monkeypatch.setattr(np, "save", partial)
    with pytest.raises(WriteError, match=r"b\.npy: no space left on device \(needed ~8\.1 kB, free 1\.0 kB\)"):
        save_npy(tmp_path / "b.npy", np.zeros(1000))
    assert os.listdir(tmp_path) == []


def test_read_only_folder_faked_at_the_temp_file(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError) as caught:
        write_text(tmp_path / "c.txt", "x")
    assert str(caught.value) == f"{tmp_path / 'c.txt'}: read-only file system"
    assert os.listdir(tmp_path) == []


def test_read_only_folder_faked_at_the_rename_removes_the_temp(tmp_path, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(WriteError, match=r"d\.txt: read-only file system$"):
        write_text(tmp_path / "d.txt", "x")
    assert os.listdir(tmp_path) == []


def test_read_only_folder_faked_at_the_open(tmp_path, monkeypatch):
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == tmp_path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(io, "open", read_only_open)
    with pytest.raises(WriteError, match=r"e\.npy: read-only file system$"):
        save_npy(tmp_path / "e.npy", np.zeros(3))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(AS_ROOT, reason=ROOT_REASON)
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=r"ro/f\.txt: permission denied$"):
            write_text(folder / "f.txt", "x")
        with pytest.raises(WriteError, match=r"ro/sub/g\.txt: permission denied$"):
            write_text(folder / "sub" / "g.txt", "x")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_other_errors_of_the_block_are_not_taken_for_the_write(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "h.txt") as tmp:
        (tmp_path / "missing.txt").read_text()  # reading another file: its own error, unchanged
    with pytest.raises(ValueError), atomic_path(tmp_path / "h.txt") as tmp:
        tmp.write_text("partial")
        raise ValueError("boom")
    assert os.listdir(tmp_path) == []


def test_npy_writer_streams_blocks_into_a_normal_npy(tmp_path):
    array = np.arange(7 * 3 * 2, dtype=np.float64).reshape(7, 3, 2) / 3
    with npy_writer(tmp_path / "a.npy", array.shape) as write:
        for start in range(0, 7, 3):
            write(array[start : start + 3])  # converted to the file's float32
    loaded = np.load(tmp_path / "a.npy")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array.astype(np.float32))
    assert os.listdir(tmp_path) == ["a.npy"]


def test_npy_writer_leaves_nothing_when_the_rows_do_not_fit(tmp_path):
    with (
        pytest.raises(ValueError, match=r"b\.npy: 4 of 5 rows written"),
        npy_writer(tmp_path / "b.npy", (5, 2)) as write,
    ):
        write(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="does not fit"), npy_writer(tmp_path / "b.npy", (5, 2)) as write:
        write(np.zeros((6, 2)))
    with pytest.raises(ValueError, match="does not fit"), npy_writer(tmp_path / "b.npy", (5, 2)) as write:
        write(np.zeros((5, 3)))
    assert os.listdir(tmp_path) == []


def _resident_file_bytes() -> int:
    """Resident file-backed memory of this process (RssFile of /proc/self/status)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_row_chunks_of_a_memory_map_hold_one_chunk(tmp_path, monkeypatch):
    array = np.random.default_rng(0).random((4100, 1024, 2)).astype(np.float32)  # 32 MB, chunks of 4 MB
    monkeypatch.setattr(kit.io, "CHUNK_BYTES", 4 << 20)
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = _resident_file_bytes()
    total = 0.0
    for rows, block in row_chunks(mapped, rows=100, dtype=np.float64):
        assert block.dtype == np.float64
        np.testing.assert_array_equal(block, array[rows])
        total += block.sum()
    assert rows == slice(4000, 4100)
    assert _resident_file_bytes() - before < 8 << 20  # without the release every page read stays resident
    np.testing.assert_array_equal(read_rows(mapped, [3, 400, 7]), array[[3, 400, 7]])
    before = _resident_file_bytes()
    every_third = read_rows(np.load(tmp_path / "a.npy", mmap_mode="r"), np.arange(0, 4100, 3))  # a fold's rows
    assert _resident_file_bytes() - before < 8 << 20
    np.testing.assert_array_equal(every_third, array[::3])
    np.testing.assert_array_equal(read_rows(mapped, np.arange(4100) % 2 == 1), array[1::2])
    release_pages(mapped[10:20])
    np.testing.assert_array_equal(mapped[10:20], array[10:20])  # released pages read back from the file
    release_pages(array)  # an array in memory: nothing to do


def test_chunk_rows():
    assert chunk_rows(np.zeros((10, 971, 2), np.float32), chunk_bytes=971 * 8 * 3) == 3
    assert chunk_rows(np.zeros((10, 971, 2), np.float32), chunk_bytes=1) == 1


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_releasing_row_by_row_outruns_the_kernels_fault_around(tmp_path):
    np.save(tmp_path / "crops.npy", np.ones((8000, 40, 40, 3), np.uint8))  # 38 MB of 4.8 kB crops
    crops = np.load(tmp_path / "crops.npy", mmap_mode="r")
    before = _resident_file_bytes()
    for row in range(len(crops)):
        crop = crops[row]
        assert np.array(crop).sum() == 4800
        release_pages(crop)
    assert _resident_file_bytes() - before < 4 << 20


def test_scattered_reads_of_a_memory_mapped_npy_map_nothing(tmp_path):
    import pickle

    array = np.random.default_rng(1).random((3000, 1000)).astype(np.float32)  # 12 MB
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    reads = ScatteredReads(mapped)
    before = _resident_file_bytes() if Path("/proc/self/status").is_file() else 0
    order = np.random.default_rng(2).permutation(3000)
    for row in order:
        assert reads[row][0] == array[row, 0]
    if Path("/proc/self/status").is_file():
        assert _resident_file_bytes() - before < 1 << 20
    np.testing.assert_array_equal(reads[np.array([5, -1, 7])], array[[5, -1, 7]])
    np.testing.assert_array_equal(reads[np.array([[1, 2], [3, 4]])], array[[[1, 2], [3, 4]]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reads))[9], array[9])  # a worker opens its own file
    with pytest.raises(IndexError):
        reads[3000]
    np.testing.assert_array_equal(ScatteredReads(mapped[10:20])[3], array[13])  # a view: read through the map
    np.testing.assert_array_equal(ScatteredReads(array)[np.array([4, 2])], array[[4, 2]])
