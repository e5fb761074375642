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

from kit.errors import KitError
from kit.io import WriteError, atomic_path, format_bytes, free_bytes, save_npy, write_json, write_text

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
