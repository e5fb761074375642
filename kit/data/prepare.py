"""A cache of face crops at training size: uint8, memory-mapped, with the transform that undoes each crop.

Training reads this instead of decoding JPEGs every epoch (at 128 px a GPU trains faster than 16 cores decode).
Each crop is the model input's crop (``kit.data.geometry.crop_transform``) plus ``pad`` pixels of border on every
side, so that augmentation can rotate and shift without cutting points; an exact integer centre crop of
``size`` x ``size`` is the un-augmented model input. ``crop_image`` makes one crop; inference on new images must
use it (after ``kit.data.images.load_image``) to get the cache's crops bit for bit.

A cache is keyed by its parameters, the table (path, size, mtime) and every image it crops (name, size and
mtime, in table order): an image replaced after ``kit prepare`` gives a new key, and the stale cache is removed
once the new one is complete.

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
import os
import re
import shutil
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.competition import Competition
from kit.data.geometry import apply_affine, crop_transform, invert_affine, warp_image
from kit.data.images import load_image
from kit.errors import DataError
from kit.io import WriteError, format_bytes, free_bytes, write_error
from kit.locks import process_alive

CACHE_VERSION = 2  # 2: the key covers every image's name, size and mtime
_STAT_CHUNK = 4096  # file names stat-ed per thread-pool task


@dataclass(frozen=True)
class CropCache:
    """Crops of one split (``train`` or ``test``): ``images`` (N, S, S, 3) uint8 and ``transforms`` (N, 2, 3)."""

    path: Path
    size: int  # model input size
    pad: int  # border kept on each side: the cache side is size + 2 x pad

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


def _stat_images(image_dir: Path, names: Sequence[str], workers: int | None = None) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every image, in order; stat-ed relative to the folder, in chunks on a thread pool.

    Raises:
        DataError: an image is missing or cannot be stat-ed.
    """
    try:
        fd = os.open(image_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise DataError(f"{image_dir}: cannot open the image folder ({exc.strerror})") from None

    def part(start: int) -> list[tuple[int, int]]:
        out = []
        for name in names[start : start + _STAT_CHUNK]:
            try:
                stat = os.stat(name, dir_fd=fd)
            except FileNotFoundError:
                raise DataError(f"{image_dir / name}: image file not found") from None
            except OSError as exc:
                raise DataError(f"{image_dir / name}: cannot stat image ({exc.strerror})") from None
            out.append((stat.st_size, stat.st_mtime_ns))
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


def _key(comp: Competition, split: str, size: int, margin: float, pad: int) -> str:
    table, image_dir, names = _split_files(comp, split)
    stat = table.stat()
    params = f"v{CACHE_VERSION}|{split}|{int(size)}|{float(margin)!r}|{int(pad)}"
    digest = hashlib.sha256(f"{params}|{table.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    names = [str(name) for name in names]
    stats = _stat_images(image_dir, names)
    digest.update("".join(f"{n}\t{s}\t{t}\n" for n, (s, t) in zip(names, stats, strict=True)).encode())
    return digest.hexdigest()[:12]


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


def _write_crops(
    file: Path,
    paths: list[Path],
    size: int,
    margin: float,
    pad: int,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> np.ndarray:
    """Crop every image into ``file`` (an ``.npy`` of (N, S, S, 3) uint8) with plain writes; return the transforms."""
    side = size + 2 * pad
    header = _npy_header((len(paths), side, side, 3))
    row = side * side * 3
    transforms = np.empty((len(paths), 2, 3), dtype=np.float64)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _reserve(fd, len(header) + len(paths) * row)
        _pwrite_all(fd, np.frombuffer(header, np.uint8), 0)

        def crop(i: int) -> None:
            image, transforms[i] = crop_image(load_image(paths[i]), size, margin, pad)
            _pwrite_all(fd, image, len(header) + i * row)

        pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))  # cv2 and pwrite release the GIL
        try:
            for _ in pool.map(crop, range(len(paths))):
                if progress:
                    progress(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the build instead of cropping on
    finally:
        os.close(fd)
    return transforms


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
) -> CropCache:
    """Build (or reuse) the crop cache of a split; written to a temporary folder and renamed when complete.

    The cache is reused only if the table and every image are unchanged (name, size, mtime); otherwise it is
    rebuilt, and older caches of the same parameters are removed once the new one is complete. A build first
    removes the folders of dead builds and checks the free space.

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

    Raises:
        DataError: the folder, a table or an image is missing or malformed.
        WriteError: the disk cannot hold the cache (naming the bytes needed and free), or the workspace is
            read-only; nothing is left behind.
    """
    comp = data_dir if isinstance(data_dir, Competition) else Competition.load(data_dir, workspace=workspace)
    path = crop_cache_path(comp, split, size, margin, pad)
    cache = CropCache(path=path, size=size, pad=pad)
    remove_dead_builds(path.parent)
    if (path / "meta.json").is_file():
        prune_stale(path, split, size, margin, pad)
        return cache
    _, image_dir, names = _split_files(comp, split)
    paths = [image_dir / name for name in names]
    needed = cache_bytes(len(paths), size + 2 * pad)
    _check_space(path, needed, split)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / _HOST_FILE).write_text(socket.gethostname())
            transforms = _write_crops(tmp / "images.npy", paths, size, margin, pad, progress, workers)
            np.save(tmp / "transforms.npy", transforms)
            meta = _meta(split, size, margin, pad) | {"n": len(paths), "version": CACHE_VERSION, "key": path.name[-12:]}
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
    return cache
