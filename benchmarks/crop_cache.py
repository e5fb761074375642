"""Crop cache build speed: the old path (full strict decode + crop_image, crops sent back to the parent) against the
new one (``kit.data.prepare``: reduced-scale JPEG decode, workers writing their crops), and the share of a first
build that hashing the images first cost.

    .venv/bin/python benchmarks/crop_cache.py IMAGES_DIR --size 128 --pad 16 [--n N] [--workers W] [--new-only]

Reads the images where they are (``.jpg``, ``.jpeg``, ``.png`` of IMAGES_DIR, sorted, the first N); writes the
caches to a temporary folder, removed at the end. Files are read once beforehand, so every variant finds them in
the page cache. With ``--workers 1`` every variant runs in this process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from kit.data import prepare
from kit.data.images import is_jpeg, load_image

SUFFIXES = (".jpg", ".jpeg", ".png")


def _old_crop(path: Path, size: int, margin: float, pad: int):
    """The old kit's cache crop: a full strict decode, then crop_image."""
    return prepare.crop_image(load_image(path, strict=True), size, margin, pad)


def _old_build(file: Path, paths: list[Path], size: int, margin: float, pad: int, workers: int) -> None:
    """The old ``_write_crops``: workers decode and crop, the parent receives every crop and writes it."""
    side = size + 2 * pad
    header = prepare._npy_header((len(paths), side, side, 3))
    row = side * side * 3
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    crop = partial(_old_crop, size=size, margin=margin, pad=pad)
    try:
        prepare._reserve(fd, len(header) + len(paths) * row)
        prepare._pwrite_all(fd, np.frombuffer(header, np.uint8), 0)
        pool = None
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(crop, paths, chunksize=prepare._STRICT_CHUNK)
        else:
            results = map(crop, paths)
        for i, (image, _) in enumerate(results):
            prepare._pwrite_all(fd, image, len(header) + i * row)
        if pool is not None:
            pool.shutdown()
    finally:
        os.close(fd)


def _new_build(file: Path, paths: list[Path], size: int, margin: float, pad: int, workers: int) -> np.ndarray:
    prepare._STRICT_POOL_MIN = 0 if workers > 1 else len(paths) + 1  # the pool whatever the count, as the old one
    return prepare._write_crops(file, paths, size, margin, pad, None, workers)[2]


def _timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def _cpu(function, *args) -> tuple[float, float, float, object]:
    """(wall seconds, this process's CPU seconds, its finished children's CPU seconds, result)."""
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, result = _timed(function, *args)
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = [a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True)]
    return wall, cpu[0], cpu[1], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="folder of face photos (read in place, never copied)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pad", type=int, default=16)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--n", type=int, default=500, help="images (the first N, sorted by name)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--new-only", action="store_true", help="time only the new build (with --workers)")
    args = parser.parse_args()

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)[: args.n]
    if not paths:
        raise SystemExit(f"{args.images}: no .jpg, .jpeg or .png images")
    n, crop = len(paths), (args.size, args.margin, args.pad)
    total_bytes = sum(len(p.read_bytes()) for p in paths)  # into the page cache for every variant
    scales = [
        prepare._reduction(*load_image(p).shape[1::-1], args.size, args.margin) if is_jpeg(p.read_bytes()) else 1
        for p in paths[:50]
    ]
    print(
        f"{n} images from {args.images}, {total_bytes / n / 1024:.0f} KiB each on average; crops of size {args.size}, "
        f"margin {args.margin:g}, pad {args.pad}"
    )
    print("decode scale of the first 50: " + ", ".join(f"1/{f}: {scales.count(f)}" for f in (1, 2, 4, 8)))

    with tempfile.TemporaryDirectory(prefix="kit-crop-bench-") as tmp:
        file = Path(tmp) / "images.npy"
        times, cpu = {}, {}
        for workers in [args.workers] if args.new_only else sorted({1, args.workers}):
            new, new_parent, new_workers, digests = _cpu(_new_build, file, paths, *crop, workers)
            times[workers], cpu[workers] = new, new_parent + new_workers
            if args.new_only:
                print(
                    f"workers {workers}: new {n / new:7.1f} images/s; CPU ms/image "
                    f"{(new_parent + new_workers) / n * 1e3:.2f}, of which in this process {new_parent / n * 1e3:.2f}"
                )
                continue
            old, old_parent, old_workers, _ = _cpu(_old_build, file, paths, *crop, workers)
            print(
                f"workers {workers}: old {n / old:7.1f} images/s, new {n / new:7.1f} images/s ({old / new:.2f}x); "
                f"CPU ms/image: old {(old_parent + old_workers) / n * 1e3:.2f}, "
                f"new {(new_parent + new_workers) / n * 1e3:.2f}, "
                f"of which in this process: old {old_parent / n * 1e3:.2f}, new {new_parent / n * 1e3:.2f}"
            )
        stats = [p.stat().st_size for p in paths]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # as image_fingerprint hashes
            hashing, hashed = _timed(lambda: list(pool.map(prepare._content_digest, paths, stats, chunksize=256)))
        same = np.array_equal(digests, np.array(hashed, dtype="S16"))  # as the store keeps them
        assert same, "the build's digests differ from the fingerprint's"
        digest = 0.0
        for path in paths:  # the digest alone, of bytes already read (as the build has them)
            data = path.read_bytes()
            digest += _timed(prepare._data_digest, data)[0]
        workers = max(times)
        print(
            f"fingerprint: hashing every image first (the old first build's pass) {hashing / n * 1e6:.0f} us/image, "
            f"{hashing / times[workers]:.1%} of the new build with {workers} worker(s). The new first build hashes "
            f"the bytes it decodes: {digest / n * 1e6:.0f} us/image of CPU, {digest / cpu[workers]:.1%} of the "
            "build's CPU time"
        )


if __name__ == "__main__":
    main()
