"""A cache of face crops at training size: uint8, memory-mapped, with the transform that undoes each crop.

Training reads this instead of decoding JPEGs every epoch (at 128 px a GPU trains faster than 16 cores decode).
Each crop is the model input's crop (``kit.data.geometry.crop_transform``) plus ``pad`` pixels of border on every
side, so that augmentation can rotate and shift without cutting points; an exact integer centre crop of
``size`` x ``size`` is the un-augmented model input. ``load_crop`` makes one crop from an image file; inference on
new images must use it to get the cache's crops bit for bit. A JPEG that the crop shrinks 2x or more is decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, never below the crop's resolution: several times faster than a full
decode), the matrix still mapping original pixels to crop pixels; other images are decoded whole (``crop_image``).

A cache is keyed by its parameters and the content of every image it crops, in table order (``image_fingerprint``):
each image's fingerprint is a hash of its size and its first and last 16 KiB (the whole file for a small face crop;
re-encoding a JPEG changes its last bytes), kept in the workspace and reused while the image's size, mtime, inode
and ctime hold (a file rewritten in place with its old size and mtime, ``cp -p`` or ``rsync -t``, still changes its
ctime). A build hashes the bytes it decodes, so a first build reads each image once: it crops into a temporary
folder and names the cache after the images it read; only when a complete cache of the same parameters exists (which
the images may still match) are the images the store does not know hashed first. An image replaced after ``kit
prepare`` gives a new key, and the stale cache is removed once the new one is complete. The same fingerprint is the
images' part of a run's identity (``images_sha256``).

A build decodes strictly, as ``kit check --decode`` does: corrupt JPEG data the decoder would repair with only a
warning is an error naming the file, or (``skip_corrupt``) listed in the cache, whose corrupt training images are
then left out of training. Many images are cropped by worker processes, each writing its crops into the file.

Caches live in the competition's workspace (``Competition.cache_dir``). A build checks the free space first,
reserves the file's blocks before writing (a memory map written past the free space dies of SIGBUS; plain writes
fail with ENOSPC) and leaves nothing behind when it fails; the folder of a build killed outright (``.tmpPID`` of
a process no longer alive) is removed by the next build.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from kit.data.competition import Competition
from kit.data.geometry import apply_affine, compose_affine, crop_transform, invert_affine, warp_image
from kit.data.images import (
    CorruptImage,
    check_image_data,
    decode_image,
    is_jpeg,
    jpeg_orientation,
    read_image_bytes,
    unreadable,
)
from kit.errors import DataError
from kit.io import WriteError, atomic_path, format_bytes, free_bytes, write_error
from kit.locks import process_alive

# 2: the key covers every image's name, size and mtime; 3: their content, strict decoding; 4: JPEGs decoded at 1/f
CACHE_VERSION = 4
_STAT_CHUNK = 4096  # file names stat-ed per thread-pool task
# An image's fingerprint hashes its first and last 16 KiB and its size: hashing 64 KiB cost 5% of a build that
# decodes at reduced scale, 16 KiB about 1%.
_FINGERPRINT_BYTES = 16 << 10
_STORE_VERSION = 2  # 2: 16 KiB (was 64)
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within the clock's tick: hash it again
_STRICT_POOL_MIN = 2000  # fewer images decode strictly faster in this process than worker processes start
_STRICT_CHUNK = 32  # images per worker-process task
_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes a JPEG at, 1/f
# EXIF orientations (as OpenCV applies them) that reverse the displayed x or y axis, and that transpose the image.
_FLIPS_X, _FLIPS_Y, _TRANSPOSES = frozenset({2, 3, 6, 7}), frozenset({3, 4, 7, 8}), frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class CropCache:
    """Crops of one split (``train`` or ``test``): ``images`` (N, S, S, 3) uint8 and ``transforms`` (N, 2, 3)."""

    path: Path
    size: int  # model input size
    pad: int  # border kept on each side: the cache side is size + 2 x pad
    corrupt: tuple[int, ...] = field(default=(), compare=False)  # rows with corrupt data (built with skip_corrupt)

    @property
    def side(self) -> int:
        return self.size + 2 * self.pad

    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    def transforms(self) -> np.ndarray:
        """(N, 2, 3) affine matrices from original pixels to cache-crop pixels."""
        return np.load(self.path / "transforms.npy")

    def to_cache(self, points: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Original pixels (N, P, 2) of rows ``rows`` (default: all) -> cache-crop pixels."""
        transforms = self.transforms() if rows is None else self.transforms()[rows]
        return apply_affine(points, transforms).astype(np.float32)

    def to_original(self, points: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Model-input pixels (N, P, 2) of the centre crop -> original-image pixels."""
        transforms = self.transforms() if rows is None else self.transforms()[rows]
        return apply_affine(np.asarray(points, np.float64) + self.pad, invert_affine(transforms)).astype(np.float32)


def crop_image(image: np.ndarray, size: int, margin: float, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The cache's crop of a fully decoded image: the model input's crop with ``pad`` pixels of border on each side.

    The cache decodes a JPEG the crop shrinks 2x or more at reduced scale: use ``load_crop`` to get its crops bit
    for bit.

    Args:
        image: (H, W, 3) uint8 RGB, as ``kit.data.images.load_image`` returns it.
        size: model input size.
        margin: crop margin, a fraction of the shorter side on each side (see ``crop_transform``).
        pad: border kept on each side.

    Returns:
        The (size + 2 pad, size + 2 pad, 3) uint8 crop and its (2, 3) float64 matrix from original pixels to
        crop pixels.

    Raises:
        ValueError: ``image`` is not (H, W, 3) uint8, or the crop parameters are out of range.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    matrix = _crop_matrix(image.shape[0], image.shape[1], size, margin, pad)
    return warp_image(image, matrix, size + 2 * pad), matrix


def _crop_matrix(height: int, width: int, size: int, margin: float, pad: int) -> np.ndarray:
    """The input crop's matrix, shifted by ``pad`` and enlarged: same scale, so centre-cropping is exact."""
    if size < 1 or pad < 0:
        raise ValueError(f"size must be positive and pad non-negative, got size={size}, pad={pad}")
    matrix = crop_transform(height, width, size, margin)
    matrix[:, 2] += pad
    return matrix


def load_crop(
    path: str | Path, size: int, margin: float, pad: int, strict: bool = False, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The cache's crop of an image file, bit for bit (``crop_image``'s crop, from a reduced decode where possible).

    Args:
        path: the image file.
        size: model input size.
        margin: crop margin (see ``crop_image``).
        pad: border kept on each side.
        strict: fail on corrupt data the decoder repairs (see ``kit.data.images.load_image``).
        max_pixels: the pixel limit (default ``kit.data.images.max_image_pixels()``).

    Returns:
        The (size + 2 pad, size + 2 pad, 3) uint8 crop and its (2, 3) float64 matrix from original pixels (EXIF
        orientation applied) to crop pixels.

    Raises:
        DataError: the file is missing, not an image, a truncated JPEG, too large, or (``strict``) corrupt.
        ValueError: the crop parameters are out of range.
    """
    path = Path(path)
    return _crop_data(path, read_image_bytes(path), size, margin, pad, strict, max_pixels)


def _reduction(width: int, height: int, size: int, margin: float) -> int:
    """The largest f of 8, 4, 2 whose 1/f decode still has the crop's resolution; 1 if none."""
    side = min(width, height) * (1.0 + 2.0 * margin)
    if side <= 0:
        return 1  # crop_transform names the bad margin
    return next((f for f in _REDUCTIONS if f * size <= side), 1)


def _crop_data(
    path: Path, data: bytes, size: int, margin: float, pad: int, strict: bool = False, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``load_crop`` of a file's bytes."""
    width, height = check_image_data(path, data, max_pixels)
    f = _reduction(width, height, size, margin) if is_jpeg(data) else 1
    if f > 1:
        orientation = jpeg_orientation(data)
        if orientation in _TRANSPOSES:
            width, height = height, width
        matrix = _crop_matrix(height, width, size, margin, pad)
        small = decode_image(path, data, strict, f)
        small_height, small_width = small.shape[:2]
        if (small_height, small_width) == (-(-height // f), -(-width // f)):
            # The decode maps pixel edges as an area resize does: x_small + 0.5 = (x + 0.5) / f, on each axis of
            # the stored image; an axis the orientation reverses starts at the other end, whose partial pixel
            # (when f does not divide the side) shifts it by small side - side / f.
            shift_x = small_width - width / f if orientation in _FLIPS_X else 0.0
            shift_y = small_height - height / f if orientation in _FLIPS_Y else 0.0
            reduce = np.array([[1 / f, 0.0, 0.5 / f - 0.5 + shift_x], [0.0, 1 / f, 0.5 / f - 0.5 + shift_y]])
            return warp_image(small, compose_affine(matrix, invert_affine(reduce)), size + 2 * pad), matrix
        # The decoder oriented the image otherwise than the EXIF tag read here: decode it whole.
    return crop_image(decode_image(path, data, strict), size, margin, pad)


def _stat_images(image_dir: Path, names: Sequence[str], workers: int | None = None) -> list[tuple[int, int, int, int]]:
    """(size, mtime_ns, inode, ctime_ns) of every image, in order; stat-ed relative to the folder, in chunks on a
    thread pool.

    Raises:
        DataError: an image is missing, is a dangling symbolic link or a loop of them, or cannot be stat-ed.
    """
    try:
        fd = os.open(image_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise DataError(f"{image_dir}: cannot open the image folder ({exc.strerror})") from None

    def part(start: int) -> list[tuple[int, int, int, int]]:
        out = []
        for name in names[start : start + _STAT_CHUNK]:
            try:
                stat = os.stat(name, dir_fd=fd)
            except OSError as exc:
                raise unreadable(image_dir / name, exc) from None
            out.append((stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns))
        return out

    try:
        starts = range(0, len(names), _STAT_CHUNK)
        if len(starts) <= 1:
            return part(0)
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # helps on cold or network disks
            return [stat for chunk in pool.map(part, starts) for stat in chunk]
    finally:
        os.close(fd)


def _split_files(comp: Competition, split: str) -> tuple[Path, Path, np.ndarray]:
    """(table, image folder, ordered file names) of ``split``."""
    if split == "train":
        return comp.train_csv, comp.train_image_dir, comp.train.file_names
    if split == "test":
        return comp.test_csv, comp.test_image_dir, comp.test.file_names
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _content_digest(path: Path, size: int) -> bytes:
    """16-byte hash of a file's size, first and last ``_FINGERPRINT_BYTES`` (the whole file up to twice that)."""
    digest = hashlib.sha256(str(size).encode())  # sha256 has CPU instructions: about as fast as the read itself
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))
    return digest.digest()[:16]


def _data_digest(data: bytes) -> bytes:
    """``_content_digest`` of a file from its bytes, already read."""
    digest, view = hashlib.sha256(str(len(data)).encode()), memoryview(data)  # a view: slices copy nothing
    digest.update(view[:_FINGERPRINT_BYTES])
    if len(data) > _FINGERPRINT_BYTES:
        digest.update(view[max(_FINGERPRINT_BYTES, len(data) - _FINGERPRINT_BYTES) :])
    return digest.digest()[:16]


def _fingerprint_store(comp: Competition, split: str) -> Path:
    return comp.cache_dir / f"images-{split}.fingerprints.v{_STORE_VERSION}.npz"


def _load_store(path: Path, names_digest: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored (N, 4) stats and (N,) digests of these names in this order, or None."""
    try:
        with np.load(path) as store:
            if str(store["names"]) != names_digest or store["stats"].shape != (n, 4):
                return None
            return store["stats"], store["digests"]
    except (OSError, ValueError, KeyError, EOFError):
        return None


@dataclass
class _Digests:
    """Every image's content digest of a split, as far as the workspace's store knows them (the rows ``todo`` not)."""

    split: str
    image_dir: Path
    names: list[str]
    stats: np.ndarray  # (N, 4) size, mtime, inode and ctime, taken now
    digests: np.ndarray  # (N,) S16, zero in the rows of todo
    todo: np.ndarray  # the rows whose digest is unknown
    store: Path
    before: int  # the time before the stats: a file changed since then may change again unseen

    @classmethod
    def of(cls, comp: Competition, split: str, workers: int | None = None) -> _Digests:
        """Stat every image and take the digests of the unchanged ones from the store.

        Raises:
            DataError: an image is missing, or cannot be stat-ed.
        """
        _, image_dir, names = _split_files(comp, split)
        names = [str(name) for name in names]
        before = time.time_ns()
        stats = np.array(_stat_images(image_dir, names, workers), dtype=np.int64).reshape(len(names), 4)
        store = _fingerprint_store(comp, split)
        digests = np.zeros(len(names), dtype="S16")
        todo = np.arange(len(names))
        stored = _load_store(store, _names_digest(names), len(names))
        if stored is not None:
            same = (stored[0] == stats).all(axis=1)
            digests[same] = stored[1][same]
            todo = np.flatnonzero(~same)
        return cls(split, image_dir, names, stats, digests, todo, store, before)

    def hash_todo(self, workers: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        """Read and hash the images of the rows ``todo``, and save the store.

        Raises:
            DataError: an image cannot be read.
        """

        def digest(i: int) -> bytes:
            path = self.image_dir / self.names[i]
            try:
                return _content_digest(path, int(self.stats[i, 0]))
            except OSError as exc:
                raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            for i, value in zip(self.todo, pool.map(digest, self.todo, chunksize=256), strict=True):
                self.digests[i] = value
                if progress:
                    progress(1)
        self.todo = self.todo[:0]
        self.save()

    def read(self, digests: np.ndarray) -> None:
        """Take every image's digest from the bytes a build read, and save the store."""
        self.digests[:] = digests
        self.todo = self.todo[:0]
        self.save()

    def save(self) -> None:
        """Write the store; one that cannot be written only loses the reuse."""
        kept = self.stats.copy()
        kept[np.maximum(self.stats[:, 1], self.stats[:, 3]) > self.before - _RACY_NS] = -1  # changed just now
        try:
            with atomic_path(self.store) as tmp, open(tmp, "wb") as f:
                np.savez(f, names=np.array(_names_digest(self.names)), stats=kept, digests=self.digests)
        except (OSError, WriteError):
            pass

    def fingerprint(self) -> str:
        """sha256 of the names and digests in table order (``image_fingerprint``); every digest must be known."""
        assert not len(self.todo), "hash the images first"
        total = hashlib.sha256(f"{self.split}|{len(self.names)}\n".encode())
        for name, value in zip(self.names, self.digests, strict=True):
            total.update(name.encode("utf-8", "surrogateescape") + b"\0" + value)
        return total.hexdigest()


def _names_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def image_fingerprint(
    comp: Competition, split: str, workers: int | None = None, progress: Callable[[int], None] | None = None
) -> str:
    """sha256 of the split's image names and contents, in table order (the crop cache's key and the images'
    identity).

    Each image's content hash is reused from the workspace's store while its size, mtime, inode and ctime hold;
    the others are read again, ``progress`` called for each. A store that cannot be written only loses the reuse.

    Raises:
        DataError: an image is missing, unreadable, or a dangling symbolic link.
    """
    digests = _Digests.of(comp, split, workers)
    if len(digests.todo):
        digests.hash_todo(workers, progress)
    return digests.fingerprint()


def images_sha256(comp: Competition, workers: int | None = None) -> str:
    """The fingerprint of every training and test image's content (a run's ``Identity.images_sha256``)."""
    parts = [image_fingerprint(comp, split, workers) for split in ("train", "test")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _key_of(split: str, size: int, margin: float, pad: int, fingerprint: str) -> str:
    params = f"v{CACHE_VERSION}|{split}|{int(size)}|{float(margin)!r}|{int(pad)}"
    return hashlib.sha256(f"{params}|{fingerprint}".encode()).hexdigest()[:12]


def _key(comp: Competition, split: str, size: int, margin: float, pad: int) -> str:
    return _key_of(split, size, margin, pad, image_fingerprint(comp, split))


def _cache_prefix(split: str, size: int, margin: float, pad: int) -> str:
    return f"crops-{split}-{size}-m{margin:g}-p{pad}"


def crop_cache_path(comp: Competition, split: str, size: int, margin: float, pad: int) -> Path:
    """Where the crop cache of the folder's current tables and images lives (stats every image, hashes the changed)."""
    return _cache_path(comp, split, size, margin, pad, _key(comp, split, size, margin, pad))


def _cache_path(comp: Competition, split: str, size: int, margin: float, pad: int, key: str) -> Path:
    return comp.cache_dir / f"{_cache_prefix(split, size, margin, pad)}-{key}"


def _meta(split: str, size: int, margin: float, pad: int) -> dict:
    return {"split": split, "size": size, "margin": margin, "pad": pad}


def _caches(cache_dir: Path, split: str, size: int, margin: float, pad: int) -> list[Path]:
    """The folders named as the caches of these parameters (any key; not builds in progress)."""
    prefix = _cache_prefix(split, size, margin, pad)
    pattern = re.compile(re.escape(prefix) + "-[0-9a-f]{12}")
    return [folder for folder in cache_dir.glob(f"{prefix}-*") if pattern.fullmatch(folder.name)]


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_stale(folder: Path, current: Path, params: dict) -> bool:
    """A complete cache (not a build in progress) of the same parameters as ``current`` under another key."""
    if folder == current or not re.fullmatch(re.escape(current.name[:-12]) + "[0-9a-f]{12}", folder.name):
        return False
    meta = _read_meta(folder)
    # Without readable metadata a cache folder is never reused. Different margins can share a prefix
    # ("m{margin:g}"): only remove a cache made with exactly these parameters.
    return meta is None or all(meta.get(k) == v for k, v in params.items())


def _may_be_reused(cache_dir: Path, split: str, size: int, margin: float, pad: int) -> bool:
    """Whether a complete cache of these parameters and this version exists (the images may still match its key)."""
    params = _meta(split, size, margin, pad) | {"version": CACHE_VERSION}
    for folder in _caches(cache_dir, split, size, margin, pad):
        meta = _read_meta(folder)
        if meta is not None and all(meta.get(k) == v for k, v in params.items()):
            return True
    return False


def prune_stale(current: Path, split: str, size: int, margin: float, pad: int) -> list[Path]:
    """Remove the caches of the same split, size, margin and pad as ``current`` under other keys; return them."""
    params = _meta(split, size, margin, pad)
    candidates = current.parent.glob(f"{_cache_prefix(split, size, margin, pad)}-*")
    stale = [folder for folder in candidates if _is_stale(folder, current, params)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


_BUILD = re.compile(r"crops-.+\.tmp(\d+)")
_HOST_FILE = "host"


def remove_dead_builds(cache_dir: Path) -> list[Path]:
    """Remove the folders of cache builds whose process (on this host) is no longer alive; return them."""
    if not cache_dir.is_dir():
        return []
    host = socket.gethostname()
    dead = []
    for folder in cache_dir.glob("crops-*.tmp*"):
        match = _BUILD.fullmatch(folder.name)
        if match is None or process_alive(int(match[1])):
            continue
        try:
            owner = (folder / _HOST_FILE).read_text().strip()
        except OSError:
            owner = host  # killed before it wrote its host: a build of this machine's kit
        if owner == host:
            shutil.rmtree(folder, ignore_errors=True)
            dead.append(folder)
    return dead


def cache_bytes(n: int, side: int) -> int:
    """Disk space of a crop cache of ``n`` crops of ``side`` pixels: images, transforms and metadata."""
    return n * side * side * 3 + n * 48 + 3 * 4096


def _check_space(path: Path, needed: int, split: str) -> None:
    """Refuse a build the disk cannot hold before writing anything.

    Raises:
        WriteError: naming the cache folder, the bytes needed and the bytes free.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise WriteError(
            f"{path}: not enough disk space for the {split} crop cache (needed ~{format_bytes(needed)}, "
            f"free {format_bytes(free)}); free some space or choose another --workspace"
        )


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now, so that a full disk fails here and not midway (where a map would SIGBUS)."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC and friends; unsupported by the file system: the plain writes report a full disk


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header of a C-ordered uint8 array of ``shape``."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _cache_crop(path: Path, size: int, margin: float, pad: int, skip_corrupt: bool):
    """(crop, matrix, corrupt, digest) of one image decoded strictly, read once; with ``skip_corrupt`` a corrupt image
    is decoded as the decoder repairs it and flagged.

    Raises:
        DataError: the image is unreadable, or corrupt (without ``skip_corrupt``, naming the remedy).
    """
    data = read_image_bytes(path)
    try:
        crop, matrix = _crop_data(path, data, size, margin, pad, strict=True)
        corrupt = False
    except CorruptImage as exc:
        if not skip_corrupt:
            remedy = "replace or remove the image, or pass --skip-corrupt to train without it"
            raise CorruptImage(f"{exc}; {remedy}") from None
        crop, matrix = _crop_data(path, data, size, margin, pad)
        corrupt = True
    return crop, matrix, corrupt, _data_digest(data)


def _crop_rows(
    file: str, offset: int, paths: list[Path], size: int, margin: float, pad: int, skip_corrupt: bool
) -> list[tuple[np.ndarray, bool, bytes]]:
    """A worker process's task: crop consecutive images into ``file`` from byte ``offset`` on; return each one's
    (matrix, corrupt, digest)."""
    row = (size + 2 * pad) ** 2 * 3
    out = []
    fd = os.open(file, os.O_WRONLY)
    try:
        for i, path in enumerate(paths):
            crop, matrix, corrupt, digest = _cache_crop(path, size, margin, pad, skip_corrupt)
            _pwrite_all(fd, crop, offset + i * row)
            out.append((matrix, corrupt, digest))
    finally:
        os.close(fd)
    return out


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the pool


def _write_crops(
    file: Path,
    paths: list[Path],
    size: int,
    margin: float,
    pad: int,
    progress: Callable[[int], None] | None,
    workers: int | None,
    skip_corrupt: bool = False,
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Crop every image into ``file`` (an ``.npy`` of (N, S, S, 3) uint8) with plain writes; return the transforms,
    the rows of corrupt images (``skip_corrupt``) and every image's digest (``_content_digest``) of the bytes read.

    A strict decode captures its process's stderr, so it runs one at a time per process: in this process for few
    images, else in worker processes, which write their crops into the file themselves.
    """
    side = size + 2 * pad
    header = _npy_header((len(paths), side, side, 3))
    row = side * side * 3
    transforms = np.empty((len(paths), 2, 3), dtype=np.float64)
    digests = np.zeros(len(paths), dtype="S16")
    corrupt: list[int] = []

    def done(i: int, matrix: np.ndarray, bad: bool, digest: bytes) -> None:
        transforms[i], digests[i] = matrix, digest
        if bad:
            corrupt.append(i)
        if progress:
            progress(1)

    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        _reserve(fd, len(header) + len(paths) * row)
        _pwrite_all(fd, np.frombuffer(header, np.uint8), 0)
        if len(paths) < _STRICT_POOL_MIN or workers < 2:
            for i, path in enumerate(paths):
                crop, matrix, bad, digest = _cache_crop(path, size, margin, pad, skip_corrupt)
                _pwrite_all(fd, crop, len(header) + i * row)
                done(i, matrix, bad, digest)
            return transforms, corrupt, digests
        starts = range(0, len(paths), _STRICT_CHUNK)
        task = partial(_crop_rows, os.fspath(file), size=size, margin=margin, pad=pad, skip_corrupt=skip_corrupt)
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
        try:
            offsets = (len(header) + start * row for start in starts)
            chunks = (paths[start : start + _STRICT_CHUNK] for start in starts)
            for start, results in zip(starts, pool.map(task, offsets, chunks), strict=True):
                for i, (matrix, bad, digest) in enumerate(results, start):
                    done(i, matrix, bad, digest)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the build instead of cropping on
    finally:
        os.close(fd)
    return transforms, corrupt, digests


def _is_the_builds(exc: OSError, tmp: Path) -> bool:
    """Whether ``exc`` came from writing the build folder ``tmp`` (not, say, from reading an image)."""
    if exc.filename is None:
        return True
    name = Path(os.fsdecode(exc.filename))
    return name == tmp or tmp in name.parents or name in tmp.parents


def prepare_crops(
    data_dir: str | Path | Competition,
    split: str,
    size: int,
    margin: float = 0.0,
    pad: int = 16,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    workspace: str | Path | None = None,
    skip_corrupt: bool = False,
) -> CropCache:
    """Build (or reuse) the crop cache of a split; written to a temporary folder and renamed when complete.

    The cache is reused only if every image's name and content are unchanged (``image_fingerprint``); otherwise
    it is rebuilt, and older caches of the same parameters are removed once the new one is complete. A build first
    removes the folders of dead builds and checks the free space. Images whose digest the store does not know are
    hashed first only when a complete cache of these parameters exists (it may be theirs); otherwise the build
    hashes the bytes it decodes and names the cache after them (dropping its crops if another process has just
    completed that cache). Images are decoded strictly (``kit check --decode``): corrupt data is an error unless
    ``skip_corrupt``, which keeps the decoder's repair in the cache and lists the rows in ``CropCache.corrupt``
    (training leaves them out).

    Args:
        data_dir: competition folder, or an already loaded ``Competition`` (its parsed tables and workspace are
            reused).
        split: ``train`` or ``test``.
        size: model input size.
        margin: crop margin (see ``crop_image``).
        pad: border kept on each side.
        progress: called with the number of images just cropped.
        workers: processes decoding and cropping many images (default: up to 8).
        workspace: where the cache goes when ``data_dir`` is a folder (see ``kit.data.competition``).
        skip_corrupt: accept images with corrupt data, listing them, instead of failing on the first.

    Raises:
        DataError: the folder, a table or an image is missing or malformed, or (``CorruptImage``) an image has
            corrupt data and ``skip_corrupt`` is not set.
        WriteError: the disk cannot hold the cache (naming the bytes needed and free), or the workspace is
            read-only; nothing is left behind.
    """
    comp = data_dir if isinstance(data_dir, Competition) else Competition.load(data_dir, workspace=workspace)
    remove_dead_builds(comp.cache_dir)
    _, image_dir, names = _split_files(comp, split)
    known = _Digests.of(comp, split)
    if len(known.todo) and _may_be_reused(comp.cache_dir, split, size, margin, pad):
        known.hash_todo()  # cheaper than a build that may turn out to be the cache already here
    path = None  # the cache's folder: known now if every image's digest is, else after the build reads them
    if not len(known.todo):
        path = _cache_path(comp, split, size, margin, pad, _key_of(split, size, margin, pad, known.fingerprint()))
        if (path / "meta.json").is_file():
            prune_stale(path, split, size, margin, pad)
            return _checked(path, size, pad, image_dir, names, skip_corrupt)
    named = path or comp.cache_dir / _cache_prefix(split, size, margin, pad)  # in the errors
    paths = [image_dir / name for name in names]
    needed = cache_bytes(len(paths), size + 2 * pad)
    _check_space(named, needed, split)
    build = named.name if path else f"{named.name}-{secrets.token_hex(6)}"  # a stand-in key until the images are read
    tmp = named.with_name(f"{build}.tmp{os.getpid()}")
    try:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / _HOST_FILE).write_text(socket.gethostname())
            transforms, corrupt, digests = _write_crops(
                tmp / "images.npy", paths, size, margin, pad, progress, workers, skip_corrupt
            )
            known.read(digests)  # the cache is named after the bytes it was cropped from
            key = _key_of(split, size, margin, pad, known.fingerprint())
            path = _cache_path(comp, split, size, margin, pad, key)
            np.save(tmp / "transforms.npy", transforms)
            meta = _meta(split, size, margin, pad) | {"n": len(paths), "version": CACHE_VERSION, "key": key}
            meta["corrupt"] = [str(names[i]) for i in corrupt]
            (tmp / "meta.json").write_text(json.dumps(meta))
            (tmp / _HOST_FILE).unlink()
            if not (path / "meta.json").is_file():  # another process may have just finished the same cache
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # before measuring the free space
            error = write_error(named, exc, needed) if _is_the_builds(exc, tmp) else None
            if error is None:
                raise
            raise error from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_stale(path, split, size, margin, pad)
    return _checked(path, size, pad, image_dir, names, skip_corrupt)


def _checked(path: Path, size: int, pad: int, image_dir: Path, names, skip_corrupt: bool) -> CropCache:
    """The complete cache at ``path``, its corrupt rows refused unless ``skip_corrupt``."""
    try:
        listed = json.loads((path / "meta.json").read_text()).get("corrupt", [])
    except (OSError, ValueError, AttributeError):
        listed = []
    if listed and not skip_corrupt:
        raise CorruptImage(
            f"{image_dir / listed[0]}: corrupt image data ({len(listed)} image(s) in {image_dir}); replace or remove "
            "it, or pass --skip-corrupt to train without it"
        )
    rows = {str(name): i for i, name in enumerate(names)}
    return CropCache(path=path, size=size, pad=pad, corrupt=tuple(sorted(rows[n] for n in listed if n in rows)))
