"""The crop cache: keyed by the tables and every image, rebuilt when an image changes, stale caches pruned."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from kit.data import prepare
from kit.data.competition import Competition
from kit.data.images import load_image
from kit.data.prepare import crop_cache_path, crop_image, prepare_crops
from kit.errors import DataError

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


def test_same_size_new_mtime_changes_the_key(make_competition):
    tiny = make_competition(n_train=3, n_test=1)
    comp = Competition.load(tiny.root)
    before = crop_cache_path(comp, "train", SIZE, MARGIN, PAD)
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) == before
    stat = tiny.train_image(1).stat()
    os.utime(tiny.train_image(1), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert crop_cache_path(comp, "train", SIZE, MARGIN, PAD) != before
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
    assert [size for size, _ in stats] == list(range(50))
    assert [mtime for _, mtime in stats] == [(tmp_path / name).stat().st_mtime_ns for name in names]
