"""A cache of face crops at training size: uint8, memory-mapped, with the transform that undoes each crop.

Training reads this instead of decoding JPEGs every epoch (at 128 px a GPU trains faster than 16 cores decode).
Each crop is the model input's crop (``kit.data.geometry.crop_transform``) plus ``pad`` pixels of border on every
side, so that augmentation can rotate and shift without cutting points; an exact integer centre crop of
``size`` x ``size`` is the un-augmented model input. ``crop_image`` makes one crop; inference on new images must
use it (after ``kit.data.images.load_image``) to get the cache's crops bit for bit.

A cache is keyed by its parameters and the content of every image it crops, in table order
(``image_fingerprint``): each image's fingerprint is a hash of its size and its first and last 64 KiB (the whole
file for a face photo), kept in the workspace and reused while the image's size, mtime, inode and ctime hold (a
file rewritten in place with its old size and mtime, ``cp -p`` or ``rsync -t``, still changes its ctime). An image
replaced after ``kit prepare`` gives a new key, and the stale cache is removed once the new one is complete. The
same fingerprint is the images' part of a run's identity (``images_sha256``).

A build decodes strictly, as ``kit check --decode`` does: corrupt JPEG data the decoder would repair with only a
warning is an error naming the file, or (``skip_corrupt``) listed in the cache, whose corrupt training images are
then left out of training.

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
from kit.data.geometry import apply_affine, crop_transform, invert_affine, warp_image
from kit.data.images import CorruptImage, load_image, unreadable
from kit.errors import DataError
from kit.io import WriteError, atomic_path, format_bytes, free_bytes, write_error
from kit.locks import process_alive

CACHE_VERSION = 3  # 2: the key covers every image's name, size and mtime; 3: their content, strict decoding
_STAT_CHUNK = 4096  # file names stat-ed per thread-pool task
_FINGERPRINT_BYTES = 64 << 10  # an image's fingerprint hashes its first and last 64 KiB and its size
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within the clock's tick: hash it again
_STRICT_POOL_MIN = 2000  # fewer images decode strictly faster in this process than worker processes start
_STRICT_CHUNK = 32  # images per worker-process task


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
    """The cache's crop of one decoded image: the model input's crop with ``pad`` pixels of border on each side.

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
    if size < 1 or pad < 0:
        raise ValueError(f"size must be positive and pad non-negative, got size={size}, pad={pad}")
    # The input crop's matrix, shifted by `pad` and enlarged: same scale, so centre-cropping is exact.
    matrix = crop_transform(image.shape[0], image.shape[1], size, margin)
    matrix[:, 2] += pad
    return warp_image(image, matrix, size + 2 * pad), matrix


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


def _fingerprint_store(comp: Competition, split: str) -> Path:
    return comp.cache_dir / f"images-{split}.fingerprints.npz"


def _load_store(path: Path, names_digest: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored (N, 4) stats and (N,) digests of these names in this order, or None."""
    try:
        with np.load(path) as store:
            if str(store["names"]) != names_digest or store["stats"].shape != (n, 4):
                return None
            return store["stats"], store["digests"]
    except (OSError, ValueError, KeyError, EOFError):
        return None


def image_fingerprint(
    comp: Competition, split: str, workers: int | None = None, progress: Callable[[int], None] | None = None
) -> str:
    """sha256 of the split's image names and contents, in table order (the crop cache's key and the images'
    identity).

    Each image's content hash is reused from the workspace's store while its size, mtime, inode and ctime hold;
    the others are read again (a cache build reads them anyway). A store that cannot be written only loses the reuse.

    Raises:
        DataError: an image is missing, unreadable, or a dangling symbolic link.
    """
    _, image_dir, names = _split_files(comp, split)
    names = [str(name) for name in names]
    stats = np.array(_stat_images(image_dir, names, workers), dtype=np.int64).reshape(len(names), 4)
    names_digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    store = _fingerprint_store(comp, split)
    stored = _load_store(store, names_digest, len(names))
    digests = np.zeros(len(names), dtype="S16")
    todo = np.arange(len(names))
    if stored is not None:
        same = (stored[0] == stats).all(axis=1)
        digests[same] = stored[1][same]
        todo = np.flatnonzero(~same)
    if len(todo):
        now = time.time_ns()

        def digest(i: int) -> bytes:
            try:
                return _content_digest(image_dir / names[i], int(stats[i, 0]))
            except OSError as exc:
                raise DataError(f"{image_dir / names[i]}: cannot read image ({exc.strerror or exc})") from None

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            for i, value in zip(todo, pool.map(digest, todo, chunksize=256), strict=True):
                digests[i] = value
                if progress:
                    progress(1)
        kept = stats.copy()
        kept[np.maximum(stats[:, 1], stats[:, 3]) > now - _RACY_NS] = -1  # changed just now: never trusted
        try:
            with atomic_path(store) as tmp, open(tmp, "wb") as f:
                np.savez(f, names=np.array(names_digest), stats=kept, digests=digests)
        except (OSError, WriteError):
            pass
    total = hashlib.sha256(f"{split}|{len(names)}\n".encode())
    for name, value in zip(names, digests, strict=True):
        total.update(name.encode("utf-8", "surrogateescape") + b"\0" + value)
    return total.hexdigest()


def images_sha256(comp: Competition, workers: int | None = None) -> str:
    """The fingerprint of every training and test image's content (a run's ``Identity.images_sha256``)."""
    parts = [image_fingerprint(comp, split, workers) for split in ("train", "test")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _key(comp: Competition, split: str, size: int, margin: float, pad: int) -> str:
    params = f"v{CACHE_VERSION}|{split}|{int(size)}|{float(margin)!r}|{int(pad)}"
    return hashlib.sha256(f"{params}|{image_fingerprint(comp, split)}".encode()).hexdigest()[:12]


def _cache_prefix(split: str, size: int, margin: float, pad: int) -> str:
    return f"crops-{split}-{size}-m{margin:g}-p{pad}"


def crop_cache_path(comp: Competition, split: str, size: int, margin: float, pad: int) -> Path:
    """Where the crop cache of the folder's current tables and images lives (stats every image)."""
    key = _key(comp, split, size, margin, pad)
    return comp.cache_dir / f"{_cache_prefix(split, size, margin, pad)}-{key}"


def _meta(split: str, size: int, margin: float, pad: int) -> dict:
    return {"split": split, "size": size, "margin": margin, "pad": pad}


def _is_stale(folder: Path, current: Path, params: dict) -> bool:
    """A complete cache (not a build in progress) of the same parameters as ``current`` under another key."""
    if folder == current or not re.fullmatch(re.escape(current.name[:-12]) + "[0-9a-f]{12}", folder.name):
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return True  # a cache folder without readable metadata is never reused
    # Different margins can share a prefix ("m{margin:g}"): only remove a cache made with exactly these parameters.
    return not isinstance(meta, dict) or all(meta.get(k) == v for k, v in params.items())


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


def _strict_crop(path: Path, size: int, margin: float, pad: int, skip_corrupt: bool):
    """(crop, matrix, corrupt) of one image decoded strictly; with ``skip_corrupt`` a corrupt image is decoded as the
    decoder repairs it and flagged.

    Raises:
        DataError: the image is unreadable, or corrupt (without ``skip_corrupt``, naming the remedy).
    """
    try:
        return (*crop_image(load_image(path, strict=True), size, margin, pad), False)
    except CorruptImage as exc:
        if not skip_corrupt:
            remedy = "replace or remove the image, or pass --skip-corrupt to train without it"
            raise CorruptImage(f"{exc}; {remedy}") from None
    return (*crop_image(load_image(path), size, margin, pad), True)


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
) -> tuple[np.ndarray, list[int]]:
    """Crop every image into ``file`` (an ``.npy`` of (N, S, S, 3) uint8) with plain writes; return the transforms
    and the rows of corrupt images (``skip_corrupt``).

    A strict decode captures its process's stderr, so it runs one at a time per process: in this process for few
    images, else in worker processes.
    """
    side = size + 2 * pad
    header = _npy_header((len(paths), side, side, 3))
    row = side * side * 3
    transforms = np.empty((len(paths), 2, 3), dtype=np.float64)
    corrupt: list[int] = []
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    workers = workers or min(8, os.cpu_count() or 1)
    crop = partial(_strict_crop, size=size, margin=margin, pad=pad, skip_corrupt=skip_corrupt)
    try:
        _reserve(fd, len(header) + len(paths) * row)
        _pwrite_all(fd, np.frombuffer(header, np.uint8), 0)
        pool = None
        if len(paths) >= _STRICT_POOL_MIN and workers > 1:
            context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
            results = pool.map(crop, paths, chunksize=_STRICT_CHUNK)
        else:
            results = map(crop, paths)
        try:
            for i, (image, matrix, bad) in enumerate(results):
                transforms[i] = matrix
                _pwrite_all(fd, image, len(header) + i * row)
                if bad:
                    corrupt.append(i)
                if progress:
                    progress(1)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the build instead of cropping on
    finally:
        os.close(fd)
    return transforms, corrupt


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
    removes the folders of dead builds and checks the free space. Images are decoded strictly (``kit check
    --decode``): corrupt data is an error unless ``skip_corrupt``, which keeps the decoder's repair in the cache and
    lists the rows in ``CropCache.corrupt`` (training leaves them out).

    Args:
        data_dir: competition folder, or an already loaded ``Competition`` (its parsed tables and workspace are
            reused).
        split: ``train`` or ``test``.
        size: model input size.
        margin: crop margin (see ``crop_image``).
        pad: border kept on each side.
        progress: called with the number of images just cropped.
        workers: threads decoding and cropping (default: up to 8).
        workspace: where the cache goes when ``data_dir`` is a folder (see ``kit.data.competition``).
        skip_corrupt: accept images with corrupt data, listing them, instead of failing on the first.

    Raises:
        DataError: the folder, a table or an image is missing or malformed, or (``CorruptImage``) an image has
            corrupt data and ``skip_corrupt`` is not set.
        WriteError: the disk cannot hold the cache (naming the bytes needed and free), or the workspace is
            read-only; nothing is left behind.
    """
    comp = data_dir if isinstance(data_dir, Competition) else Competition.load(data_dir, workspace=workspace)
    path = crop_cache_path(comp, split, size, margin, pad)
    remove_dead_builds(path.parent)
    _, image_dir, names = _split_files(comp, split)
    if (path / "meta.json").is_file():
        prune_stale(path, split, size, margin, pad)
        return _checked(path, size, pad, image_dir, names, skip_corrupt)
    paths = [image_dir / name for name in names]
    needed = cache_bytes(len(paths), size + 2 * pad)
    _check_space(path, needed, split)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / _HOST_FILE).write_text(socket.gethostname())
            transforms, corrupt = _write_crops(
                tmp / "images.npy", paths, size, margin, pad, progress, workers, skip_corrupt
            )
            np.save(tmp / "transforms.npy", transforms)
            meta = _meta(split, size, margin, pad) | {"n": len(paths), "version": CACHE_VERSION, "key": path.name[-12:]}
            meta["corrupt"] = [str(names[i]) for i in corrupt]
            (tmp / "meta.json").write_text(json.dumps(meta))
            (tmp / _HOST_FILE).unlink()
            if not (path / "meta.json").is_file():  # another process may have just finished the same cache
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # before measuring the free space
            error = write_error(path, exc, needed) if _is_the_builds(exc, tmp) else None
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
