"""The crop cache: keyed by the tables and every image, rebuilt when an image changes, stale caches pruned; JPEGs
decoded at reduced scale where the crop shrinks them, each image read once."""

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
import PIL.Image
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.data import prepare
from kit.data.competition import Competition
from kit.data.geometry import apply_affine
from kit.data.images import load_image
from kit.data.prepare import crop_cache_path, crop_image, image_fingerprint, load_crop, prepare_crops
from kit.errors import DataError
from kit.io import WriteError, format_bytes

SIZE, MARGIN, PAD = 24, 0.1, 4


@pytest.fixture
def counted(monkeypatch):
    """Count the images the cache builder crops."""
    calls: list[int] = []
    original = prepare._cache_crop

    def crop(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare, "_cache_crop", crop)
    return calls


def _replace_image(path, seed: int) -> None:
    """Write a new JPEG of the same shape under the same name, with a later mtime."""
    before = path.stat().st_mtime_ns
    image = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    os.utime(path, ns=(before + 10**9, before + 10**9))  # the file clock may not tick between two writes


def test_load_crop_equals_the_cached_crop(make_competition):
    tiny = make_competition(n_train=5, n_test=2, size=(40, 52))  # shrunk 2x: decoded at half scale
    for split, image_path in (("train", tiny.train_image), ("test", tiny.test_image)):
        cache = prepare_crops(tiny.root, split, SIZE, MARGIN, PAD, workers=2)
        for i in range(2):
            crop, matrix = load_crop(image_path(i), SIZE, MARGIN, PAD)
            assert crop.dtype == np.uint8 and crop.shape == (cache.side, cache.side, 3)
            assert matrix.dtype == np.float64 and matrix.shape == (2, 3)
            np.testing.assert_array_equal(crop, cache.images()[i])
            np.testing.assert_array_equal(matrix, cache.transforms()[i])


def test_load_crop_of_an_image_shrunk_less_than_2x_is_crop_image(make_competition):
    tiny = make_competition(n_train=2, n_test=1, size=(40, 52))
    for path in (tiny.train_image(0), _png(tiny.train_image(1))):  # 40 px to 24 px; a PNG is always decoded whole
        for size, margin in ((SIZE, 0.0), (10, 0.0)):
            crop, matrix = load_crop(path, size, margin, PAD)
            expected = crop_image(load_image(path), size, margin, PAD)
            if path.suffix == ".png" or size == SIZE:
                np.testing.assert_array_equal(crop, expected[0])
            np.testing.assert_array_equal(matrix, expected[1])


def _png(path: Path) -> Path:
    png = path.with_suffix(".png")
    assert cv2.imwrite(str(png), cv2.imread(str(path)))
    return png


def _smooth_photo(height: int, width: int) -> np.ndarray:
    """An RGB image of smooth waves: what a reduced decode keeps (a face photo at crop resolution)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [np.sin(x / 37) * np.cos(y / 53), np.sin((x + y) / 71), np.cos(x / 29 + y / 41)]
    return np.stack([128 + 100 * c for c in channels], -1).clip(0, 255).astype(np.uint8)


def _save_jpeg(path: Path, rgb: np.ndarray, orientation: int = 1) -> Path:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(("size", "reduction"), [(150, 2), (80, 4), (40, 8)])
def test_a_reduced_decode_gives_the_full_decodes_crop(tmp_path, orientation, size, reduction, monkeypatch):
    """A JPEG of sides no factor divides, EXIF-rotated or not: the same matrix, nearly the same pixels."""
    path = _save_jpeg(tmp_path / "big.jpg", _smooth_photo(333, 421), orientation)
    decoded = []
    decode = prepare.decode_image
    monkeypatch.setattr(prepare, "decode_image", lambda *a: decoded.append(a[3:]) or decode(*a))
    crop, matrix = load_crop(path, size, 0.0, 8)
    assert decoded == [(reduction,)]  # decoded once, at 1/reduction: never below the crop's resolution
    full, full_matrix = crop_image(load_image(path), size, 0.0, 8)
    np.testing.assert_array_equal(matrix, full_matrix)
    assert crop.shape == full.shape and np.abs(crop.astype(int) - full).mean() < 2


# The stored pixels that EXIF orientation 1-8 displays as the given image.
_STORED = {
    1: lambda shown: shown,
    2: lambda shown: shown[:, ::-1],
    3: lambda shown: shown[::-1, ::-1],
    4: lambda shown: shown[::-1],
    5: lambda shown: shown.transpose(1, 0, 2),
    6: lambda shown: np.rot90(shown),
    7: lambda shown: shown[::-1, ::-1].transpose(1, 0, 2),
    8: lambda shown: np.rot90(shown, -1),
}


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_landmarks_land_on_the_same_feature_in_a_reduced_crop(tmp_path, orientation):
    """A bright dot at a known original pixel (after orientation) is where the matrix maps it, to a tenth of a pixel.

    The sides are 1 more than a multiple of 8: an axis the orientation reverses starts with a 1/8 partial pixel.
    """
    height, width = (417, 329) if orientation >= 5 else (329, 417)  # the displayed image
    dot = np.array([271.0, 97.0])  # (x, y) in displayed original pixels
    shown = np.zeros((height, width, 3), np.uint8)
    cv2.circle(shown, (int(dot[0]), int(dot[1])), 9, (255, 255, 255), -1)
    path = _save_jpeg(tmp_path / "dot.jpg", np.ascontiguousarray(_STORED[orientation](shown)), orientation)
    assert load_image(path).shape == shown.shape and load_image(path)[int(dot[1]), int(dot[0])].min() > 200
    crop, matrix = load_crop(path, 40, 0.0, 4)  # 329 px to 40: decoded at 1/8
    expected = apply_affine(dot[None], matrix)[0]
    weight = crop[..., 0].astype(float)
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    found = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
    assert np.abs(found - expected).max() < 0.15, (found, expected)  # off by 0.85 px if a flip's shift were missed


def test_a_first_build_reads_each_image_once_and_fills_the_store(make_competition, monkeypatch):
    monkeypatch.setattr(prepare, "_RACY_NS", 0)  # trust the fresh files' stats, as for files of yesterday
    tiny = make_competition(n_train=5, n_test=1)
    comp = Competition.load(tiny.root)
    reads = []
    read = prepare.read_image_bytes
    monkeypatch.setattr(prepare, "read_image_bytes", lambda path: reads.append(path) or read(path))
    with monkeypatch.context() as patched:
        patched.setattr(prepare, "_content_digest", lambda *a: pytest.fail("hashed an image before the build"))
        cache = prepare_crops(comp, "train", SIZE, MARGIN, PAD)
        assert sorted(reads) == sorted(tiny.train_image(i) for i in range(5))  # each once
        assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == cache.path  # from the store the build filled
        fingerprint = image_fingerprint(comp, "train")
    prepare._fingerprint_store(comp, "train").unlink()
    assert image_fingerprint(comp, "train") == fingerprint  # the same digests, read again from the files
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == cache.path
    assert prepare_crops(comp, "train", SIZE, MARGIN, PAD).path == cache.path and len(reads) == 5


def test_touched_images_are_hashed_first_and_the_cache_reused(make_competition, counted):
    tiny = make_competition(n_train=4, n_test=1)
    cache = prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD)
    for i in range(4):  # every stat changed (as after a copy), no content
        stat = tiny.train_image(i).stat()
        os.utime(tiny.train_image(i), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    counted.clear()
    assert prepare_crops(tiny.root, "train", SIZE, MARGIN, PAD).path == cache.path and counted == []


@pytest.mark.slow  # spawns
def test_worker_processes_write_the_same_cache(make_competition, monkeypatch):
    tiny = make_competition(n_train=7, n_test=1)
    comp = Competition.load(tiny.root)
    monkeypatch.setattr(prepare, "_STRICT_POOL_MIN", 1)
    monkeypatch.setattr(prepare, "_STRICT_CHUNK", 3)
    ticks = []
    cache = prepare_crops(comp, "train", SIZE, MARGIN, PAD, workers=2, progress=ticks.append)
    assert ticks == [1] * 7
    for i in range(7):
        crop, matrix = load_crop(tiny.train_image(i), SIZE, MARGIN, PAD)
        np.testing.assert_array_equal(cache.images()[i], crop)
        np.testing.assert_array_equal(cache.transforms()[i], matrix)
    prepare._fingerprint_store(comp, "train").unlink()
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == cache.path


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
    expected, _ = load_crop(tiny.train_image(2), SIZE, MARGIN, PAD)
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
    return load_crop(path, SIZE, MARGIN, PAD)[0]


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
    path = comp.cache_dir / "crops-train-24-m0.1-p4"  # a first build: its key is known once it has read the images
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
