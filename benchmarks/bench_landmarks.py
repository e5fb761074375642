"""Benchmark reading ``landmarks.csv``: pandas' C parser alone vs kit's first parse vs kit's cached reload.

Usage::

    python benchmarks/bench_landmarks.py                  # 393,930 rows x 971 points (~3 GB) under /tmp
    python benchmarks/bench_landmarks.py --rows 20000 --dir /tmp/bench

The file is generated once (vectorised: integer coordinates of 1 to 3 digits) and reused while its row count
matches. Each measurement runs in a fresh subprocess so that one cannot warm the next one's memory. The
CPU column (user + system, all threads) is the steadier figure on a shared machine.

On a freshly booted VM the first touch of each page of guest memory is slow (~3 s per GiB of system time here),
which would charge whichever step runs first; ``--warm-gib`` touches that much memory in a throwaway process
before measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_POINTS = 971
CHUNK_ROWS = 2000


def _format_chunk(names: list[bytes], values: np.ndarray) -> bytes:
    """TAB-separated lines for integer ``values`` (rows, cols) in [0, 1000), built with array arithmetic."""
    rows, cols = values.shape
    n_digits = 1 + (values >= 10) + (values >= 100)
    name_len = len(names[0]) + 1
    field_len = n_digits + 1  # digits and the following TAB (or the newline after the last field)
    row_len = name_len + field_len.sum(axis=1)
    row_start = np.concatenate([[0], np.cumsum(row_len)[:-1]])
    field_start = row_start[:, None] + name_len + np.cumsum(field_len, axis=1) - field_len
    out = np.empty(int(row_len.sum()), dtype=np.uint8)
    name_block = np.frombuffer(b"\t".join(names) + b"\t", dtype=np.uint8).reshape(rows, name_len)
    out[(row_start[:, None] + np.arange(name_len)).ravel()] = name_block.ravel()
    for place, divisor in enumerate((100, 10, 1)):
        # The digit for 10**(2 - place) sits at offset n_digits - 3 + place inside the field, when present.
        offset = n_digits - 3 + place
        present = offset >= 0
        out[(field_start + offset)[present]] = (values[present] // divisor) % 10 + ord("0")
    sep = field_start + n_digits
    out[sep.ravel()] = ord("\t")
    out[sep[:, -1]] = ord("\n")
    return out.tobytes()


def generate(path: Path, rows: int, n_points: int = N_POINTS, seed: int = 0) -> None:
    """Write a ``landmarks.csv`` of ``rows`` rows with random integer coordinates."""
    rng = np.random.default_rng(seed)
    columns = [f"Point_M{i}_{axis}" for i in range(n_points) for axis in ("X", "Y")]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(("\t".join(["file_name", *columns]) + "\n").encode())
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            names = [f"{i:08d}.jpg".encode() for i in range(start, start + count)]
            # Faces fill the image, so most coordinates have 2-3 digits, as in the real data.
            values = rng.integers(0, 400, size=(count, 2 * n_points))
            f.write(_format_chunk(names, values))
    os.replace(tmp, path)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(mode: str, path: str, cache_dir: str) -> None:
    """One measurement, run in a fresh process; prints a JSON line."""
    import pandas as pd

    from kit.data.landmarks import point_columns, read_landmarks

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    extra = {}
    if mode == "pandas":
        dtypes = {"file_name": str} | {c: np.float32 for c in point_columns(N_POINTS)}
        frame = pd.read_csv(path, sep="\t", dtype=dtypes)
        extra["rows"] = len(frame)
    elif mode == "kit-first":
        landmarks = read_landmarks(path, cache_dir=cache_dir)
        extra["rows"] = len(landmarks)
    elif mode == "kit-cached":
        landmarks = read_landmarks(path, cache_dir=cache_dir)
        extra["rows"] = len(landmarks)
        extra["memmap"] = isinstance(landmarks.points, np.memmap)
        opened = time.perf_counter() - start
        checksum = float(np.asarray(landmarks.points).sum(dtype=np.float64))
        extra["opened_s"] = opened
        extra["checksum"] = checksum
    seconds = time.perf_counter() - start
    extra["cpu_s"] = _cpu_seconds() - cpu_start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_gib": peak_gib, **extra}))


def _warm_memory(gib: float) -> None:
    code = f"import numpy as np; a = np.ones(int({gib} * 2**28), np.float32); print(float(a[::4096].sum()))"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _measure(mode: str, path: Path, cache_dir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--dir", str(path.parent), "--cache-dir", str(cache_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=393_930)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/kit_bench"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: DIR/cache")
    parser.add_argument("--repeat", type=int, default=1, help="measure each step this many times (fastest shown)")
    parser.add_argument("--warm-gib", type=float, default=8.0, help="memory to touch once before measuring")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.dir / "landmarks.csv"
    cache_dir = args.cache_dir or args.dir / "cache"
    if args.child:
        _child(args.child, str(path), str(cache_dir))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    marker = args.dir / "rows.txt"
    if not path.is_file() or not marker.is_file() or marker.read_text().strip() != str(args.rows):
        start = time.perf_counter()
        generate(path, args.rows)
        marker.write_text(f"{args.rows}\n")
        print(f"generated {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    # Read once so that every measurement starts from a warm page cache.
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    if args.warm_gib > 0:
        _warm_memory(args.warm_gib)

    runs: dict[str, list[dict]] = {"pandas": [], "kit-first": [], "kit-cached": []}
    for _ in range(args.repeat):  # interleaved, so that a change in machine load hits every step alike
        for mode, measured in runs.items():
            if mode == "kit-first":
                for stale in cache_dir.glob("*.npy"):
                    stale.unlink()
            measured.append(_measure(mode, path, cache_dir))
            print(json.dumps(measured[-1]), flush=True)
    results = {mode: min(measured, key=lambda r: r["seconds"]) for mode, measured in runs.items()}

    size_gib = path.stat().st_size / 2**30
    n_rows = results["pandas"]["rows"]
    cached = results["kit-cached"]
    print()
    print(f"landmarks.csv: {n_rows:,} rows x {N_POINTS} points, {size_gib:.2f} GiB, {os.cpu_count()} CPUs")
    print(f"| {'step':<40} | {'wall s':>8} | {'CPU s':>8} | {'peak RSS GiB':>12} |")
    print(f"| {'-' * 40} | {'-' * 7}: | {'-' * 7}: | {'-' * 11}: |")
    table = [
        ("pandas read_csv (C parser, float32)", results["pandas"]),
        ("kit read_landmarks, empty cache", results["kit-first"]),
        ("kit cached, open + touch all values", cached),
    ]
    for label, r in table:
        print(f"| {label:<40} | {r['seconds']:>8.2f} | {r['cpu_s']:>8.2f} | {r['peak_rss_gib']:>12.2f} |")
    print(f"| {'kit cached, open only':<40} | {cached['opened_s']:>8.3f} | {'':>8} | {'':>12} |")


if __name__ == "__main__":
    main()
