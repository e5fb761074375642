"""The crop cache: keyed by the tables and every image, rebuilt when an image changes, stale caches pruned."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.data import prepare
from kit.data.competition import Competition
from kit.data.images import load_image
from kit.data.prepare import crop_cache_path, crop_image, prepare_crops
from kit.errors import DataError
from kit.io import WriteError, format_bytes

SIZE, MARGIN, PAD = 24, 0.1, 4


@pytest.fixture
def counted(monkeypatch):
    """Count the images the cache builder crops."""
    calls: list[int] = []
    original = prepare.crop_image

    def crop(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare, "crop_image", crop)
    return calls


def _replace_image(path, seed: int) -> None:
    """Write a new JPEG of the same shape under the same name, with a later mtime."""
    before = path.stat().st_mtime_ns
    image = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    os.utime(path, ns=(before + 10**9, before + 10**9))  # the file clock may not tick between two writes


def test_crop_image_equals_the_cached_crop(make_competition):
    tiny = make_competition(n_train=5, n_test=2, size=(40, 52))
    for split, image_path in (("train", tiny.train_image), ("test", tiny.test_image)):
        cache = prepare_crops(tiny.root, split, SIZE, MARGIN, PAD, workers=2)
        for i in range(2):
            crop, matrix = crop_image(load_image(image_path(i)), SIZE, MARGIN, PAD)
            assert crop.dtype == np.uint8 and crop.shape == (cache.side, cache.side, 3)
            assert matrix.dtype == np.float64 and matrix.shape == (2, 3)
            np.testing.assert_array_equal(crop, cache.images()[i])
            np.testing.assert_array_equal(matrix, cache.transforms()[i])


def test_crop_image_rejects_a_non_rgb_array():
    with pytest.raises(ValueError, match="uint8"):
        crop_image(np.zeros((8, 8), np.uint8), SIZE, MARGIN, PAD)
    with pytest.raises(ValueError, match="uint8"):
        crop_image(np.zeros((8, 8, 3), np.float32), SIZE, MARGIN, PAD)


def test_unchanged_folder_reuses_the_cache(make_competition, counted):
    tiny = make_competition(n_train=4, n_test=2)
    first = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    assert len(counted) == 4
    built = (first.path / "images.npy").stat().st_mtime_ns
    again = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    assert again.path == first.path and len(counted) == 4  # no image cropped again
    assert (again.path / "images.npy").stat().st_mtime_ns == built
    assert prepare_crops(Competition.load(tiny.root), "train", SIZE, MARGIN, PAD).path == first.path
    assert len(counted) == 4


def test_replaced_image_rebuilds_the_cache_and_prunes_the_stale_one(make_competition, counted):
    tiny = make_competition(n_train=4, n_test=2)
    old = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    other = prepare_crops(tiny.root, "train", SIZE, 0.0, PAD)  # other parameters: kept
    test = prepare_crops(tiny.root, "test", SIZE, MARGIN, PAD)  # other split: kept
    old_crop = old.images()[2].copy()
    _replace_image(tiny.train_image(2), seed=99)
    counted.clear()

    new = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    assert new.path != old.path and len(counted) == 4
    expected, _ = crop_image(load_image(tiny.train_image(2)), SIZE, MARGIN, PAD)
    np.testing.assert_array_equal(new.images()[2], expected)
    assert not np.array_equal(new.images()[2], old_crop)
    assert not old.path.exists()  # stale: removed once the new cache was complete
    assert other.path.is_dir() and test.path.is_dir()
    assert sorted(p.name for p in new.path.parent.iterdir() if p.name.startswith("crops-")) == sorted(
        p.name for p in (new.path, other.path, test.path)
    )


def test_the_key_follows_content_not_mtime(make_competition):
    tiny = make_competition(n_train=3, n_test=1)
    comp = Competition.load(tiny.root)
    before = crop_cache_path(comp, "train", SIZE, MARGIN, PAD)
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == before
    stat = tiny.train_image(1).stat()
    os.utime(tiny.train_image(1), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: same pixels, same cache
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == before
    assert crop_cache_path(comp, "test", SIZE, MARGIN, PAD) != before


def test_prune_keeps_builds_in_progress_and_other_margins(make_competition):
    tiny = make_competition(n_train=3, n_test=1)
    cache = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    cache_dir = cache.path.parent
    prefix = cache.path.name[:-12]
    old_version = cache_dir / f"{prefix}{'0' * 12}"  # a complete older cache, e.g. of format version 1
    old_version.mkdir()
    (old_version / "meta.json").write_text('{"split": "train", "size": 24, "margin": 0.1, "pad": 4, "version": 1}')
    in_progress = cache_dir / f"{prefix}{'1' * 12}.tmp123"
    in_progress.mkdir()
    near_margin = cache_dir / f"{prefix}{'2' * 12}"  # margin 0.1000001 formats as m0.1 too: not stale
    near_margin.mkdir()
    (near_margin / "meta.json").write_text('{"split": "train", "size": 24, "margin": 0.1000001, "pad": 4}')
    removed = prepare.prune_stale(cache.path, "train", SIZE, MARGIN, PAD)
    assert removed == [old_version] and not old_version.exists()
    assert in_progress.is_dir() and near_margin.is_dir() and cache.path.is_dir()


def test_missing_image_is_named(make_competition):
    tiny = make_competition(n_train=3, n_test=1)
    tiny.train_image(1).unlink()
    with pytest.raises(DataError, match=f"{tiny.train_names[1]}: image file not found"):
        prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    assert not (tiny.root / ".kit_cache").exists() or not any((tiny.root / ".kit_cache").glob("crops-*"))


def test_stat_many_images_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_STAT_CHUNK", 7)
    names = [f"{i:04d}.jpg" for i in range(50)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x" * i)
    stats = prepare._stat_images(tmp_path, names, workers=3)
    assert [stat[0] for stat in stats] == list(range(50))
    assert [stat[1] for stat in stats] == [(tmp_path / name).stat().st_mtime_ns for name in names]
    assert [stat[3] for stat in stats] == [(tmp_path / name).stat().st_ctime_ns for name in names]


def _usage(free: int):
    return shutil._ntuple_diskusage(total=10**12, used=10**12 - free, free=free)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _builds(comp: Competition) -> list[str]:
    """Cache folders, complete or not, of the competition's workspace."""
    return sorted(p.name for p in comp.cache_dir.glob("crops-*")) if comp.cache_dir.is_dir() else []


def _crop(path) -> np.ndarray:
    return crop_image(load_image(path), SIZE, MARGIN, PAD)[0]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_too_little_free_space_refuses_before_any_crop(make_competition, counted, monkeypatch):
    tiny = make_competition(n_train=4, n_test=2)
    comp = Competition.load(tiny.root)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _usage(1000))
    with pytest.raises(WriteError) as caught:
        prepare_crops(comp, "train", SIZE, MARGIN, PAD)
    needed = format_bytes(prepare.cache_bytes(4, SIZE + 2 * PAD))
    path = crop_cache_path(comp, "train", SIZE, MARGIN, PAD)
    assert str(caught.value) == (
        f"{path}: not enough disk space for the train crop cache (needed ~{needed}, free 1.0 kB); "
        "free some space or choose another --workspace"
    )
    assert counted == [] and _builds(comp) == []


def test_kit_prepare_on_a_full_disk_is_one_line(make_competition, monkeypatch):
    tiny = make_competition(n_train=4, n_test=2)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _usage(0))
    result = CliRunner().invoke(app, ["prepare", str(tiny.root), "--size", "24"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "crops-train-24-" in last and last.count("error") == 1
    assert "not enough disk space for the train crop cache (needed ~" in last and ", free 0 B)" in last
    assert _builds(Competition.load(tiny.root)) == []


def test_full_disk_at_the_reservation_leaves_nothing(make_competition, counted, monkeypatch):
    tiny = make_competition(n_train=4, n_test=2)
    comp = Competition.load(tiny.root)
    monkeypatch.setattr(os, "posix_fallocate", _enospc, raising=False)
    with pytest.raises(WriteError, match=r"crops-train-\S+: no space left on device \(needed ~\S+ kB, free .+\)$"):
        prepare_crops(comp, "train", SIZE, MARGIN, PAD)
    assert counted == [] and _builds(comp) == []  # refused before decoding a single image


def test_full_disk_midway_stops_the_build_without_sigbus(make_competition, monkeypatch):
    tiny = make_competition(n_train=6, n_test=2)
    comp = Competition.load(tiny.root)
    real_pwrite, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) > 3:  # the header and two crops fit
            _enospc()
        return real_pwrite(fd, data, offset)

    with monkeypatch.context() as patch:
        patch.delattr(os, "posix_fallocate", raising=False)  # a file system without fallocate: no reservation
        patch.setattr(os, "pwrite", pwrite)
        with pytest.raises(WriteError, match=r"crops-train-\S+: no space left on device \(needed ~"):
            prepare_crops(comp, "train", SIZE, MARGIN, PAD, workers=1)
    assert _builds(comp) == []
    cache = prepare_crops(comp, "train", SIZE, MARGIN, PAD)  # the disk has room again: a clean build
    np.testing.assert_array_equal(cache.images()[5], _crop(tiny.train_image(5)))


def test_short_writes_and_no_fallocate_still_give_the_exact_cache(make_competition, monkeypatch):
    tiny = make_competition(n_train=3, n_test=1)
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwrite(fd, bytes(data)[:100], offset))

    def unsupported(*args):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    cache = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    for i in range(3):
        np.testing.assert_array_equal(cache.images()[i], _crop(tiny.train_image(i)))
    assert cache.images().shape == (3, cache.side, cache.side, 3)


def test_folders_of_dead_builds_are_removed_by_the_next_prepare(make_competition):
    tiny = make_competition(n_train=3, n_test=1)
    comp = Competition.load(tiny.root)
    path = crop_cache_path(comp, "train", SIZE, MARGIN, PAD)
    dead_pid = _dead_pid()
    dead = path.with_name(f"{path.name}.tmp{dead_pid}")  # a kill -9 during a build
    dead.mkdir(parents=True)
    (dead / "images.npy").write_bytes(b"\0" * 10_000)
    other_dead = comp.cache_dir / f"crops-test-99-m0-p0-{'a' * 12}.tmp{dead_pid}"
    other_dead.mkdir()
    (other_dead / "host").write_text(socket.gethostname())
    alive = path.with_name(f"{path.name}.tmp{os.getppid()}")  # a build running now
    alive.mkdir()
    elsewhere = comp.cache_dir / f"crops-test-98-m0-p0-{'b' * 12}.tmp{dead_pid}"  # another machine's build
    elsewhere.mkdir()
    (elsewhere / "host").write_text("another-host.example")
    cache = prepare_crops(comp, "train", SIZE, MARGIN, PAD)
    assert not dead.exists() and not other_dead.exists()
    assert alive.is_dir() and elsewhere.is_dir() and (cache.path / "meta.json").is_file()
    assert not (cache.path / "host").exists()
    shutil.rmtree(alive)
    dead.mkdir()
    prepare_crops(comp, "train", SIZE, MARGIN, PAD)  # reusing the finished cache cleans up too
    assert not dead.exists()


def test_unreadable_image_is_not_taken_for_a_full_disk(make_competition, monkeypatch):
    tiny = make_competition(n_train=3, n_test=1)
    real = Path.read_bytes

    def read_bytes(self):
        if self == tiny.train_image(1):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    # the image's own error, not a cache write error
    with pytest.raises(DataError, match=rf"{tiny.train_names[1]}: cannot read image \(Permission denied\)"):
        prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    assert _builds(Competition.load(tiny.root)) == []


_REAL_DISK_SCRIPT = """
import os, shutil, sys
if sys.argv[1] != "checked":
    real = shutil.disk_usage
    shutil.disk_usage = lambda path: real(path)._replace(free=10**12)  # past the early check
if sys.argv[1] == "pwrite":
    del os.posix_fallocate  # no reservation: the plain writes meet the full disk
sys.argv = ["kit", "prepare", sys.argv[2], "--size", "300", "--workspace", sys.argv[3]]
from kit.cli import main
main()
"""


@pytest.mark.slow  # spawns
@pytest.mark.parametrize("stage", ["checked", "fallocate", "pwrite"])
def test_a_real_full_disk_ends_in_one_line(make_competition, tmp_path, stage):
    """On a real 1 MB tmpfs (mounted in a user namespace; skipped where that is not allowed)."""
    unshare = shutil.which("unshare")
    mount = tmp_path / "mnt"
    mount.mkdir()
    probe = [unshare or "unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mount}"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user namespace on this machine")
    tiny = make_competition(n_train=6, n_test=1)  # 6 crops of 332 px: 2 MB
    script = tmp_path / "prepare.py"
    script.write_text(_REAL_DISK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "COLUMNS": "400"}
    shell = f'mount -t tmpfs -o size=1m tmpfs {mount} && "$@"; rc=$?; ls -A -R {mount}; exit $rc'
    command = [unshare, "-rm", "sh", "-c", shell, "sh", sys.executable, str(script), stage, str(tiny.root)]
    result = subprocess.run([*command, str(mount / "ws")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr)  # not 135 (Bus error)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = "not enough disk space" if stage == "checked" else "no space left on device (needed ~"
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert "crops-train" not in result.stdout  # the listing of the tmpfs: no cache, complete or not
