"""Build a competition of any size from a small one: images hard-linked under new names, labels copied with them.

    python benchmarks/scale_competition.py SOURCE OUT N_TRAIN N_TEST

Row i of the new training table is the source's training row i mod S under the name ``{i:07d}.jpg``, its image a
hard link to that row's image (no pixels are copied, so the full competition's 493,749 names cost a few MB of
disk); the test set and its private answers are built the same way from the source's test rows. The tables are
copied as text, line by line, so the labels are exactly the source's and every row is valid. Used by
``benchmarks/scale.sh``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

_TABLES = {  # (folder, file) of each table copied row by row; the first column is the file name
    "train": ("train", "landmarks.csv"),
    "test": ("test", "test_points.csv"),
    "private": ("private", "test_landmarks.csv"),
}


def _rows(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """The header line and (file name, rest of the line) of every row of a TAB-separated table."""
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline()
        rows = []
        for line in f:
            name, rest = line.split("\t", 1)
            rows.append((name, rest if rest.endswith("\n") else rest + "\n"))
    return header, rows


def _write_table(path: Path, header: str, rows: list[tuple[str, str]], names: list[str]) -> None:
    """``names[i]`` with the text of source row i mod len(rows), written to a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="", buffering=16 << 20) as f:
        f.write(header)
        for i, name in enumerate(names):
            f.write(f"{name}\t{rows[i % len(rows)][1]}")
    os.replace(tmp, path)


def _link_images(source_dir: Path, out_dir: Path, rows: list[tuple[str, str]], names: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        os.link(source_dir / rows[i % len(rows)][0], out_dir / name)


def build(source: Path, out: Path, n_train: int, n_test: int) -> None:
    """Write the competition ``out`` (which must not exist) with ``n_train`` training and ``n_test`` test images."""
    if out.exists():
        raise SystemExit(f"{out}: already exists")
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    train_names = [f"{i:07d}.jpg" for i in range(n_train)]
    test_names = [f"{n_train + i:07d}.jpg" for i in range(n_test)]
    for key, names, images in (("train", train_names, "train"), ("test", test_names, "test")):
        folder, file = _TABLES[key]
        header, rows = _rows(source / folder / file)
        _write_table(tmp / folder / file, header, rows, names)
        _link_images(source / images / "images", tmp / images / "images", rows, names)
        if key == "test":
            folder, file = _TABLES["private"]
            private_header, private_rows = _rows(source / folder / file)
            if [name for name, _ in private_rows] != [name for name, _ in rows]:
                raise SystemExit(f"{source / folder / file}: rows differ from {source / 'test' / 'test_points.csv'}")
            _write_table(tmp / folder / file, private_header, private_rows, names)
    flip = source / "private" / "flip_permutation.txt"
    if flip.is_file():
        shutil.copy(flip, tmp / "private" / flip.name)
    os.replace(tmp, out)
    print(f"built {out}: {n_train} train + {n_test} test images in {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a competition folder (kit synth's layout) to copy rows from")
    parser.add_argument("out", type=Path)
    parser.add_argument("n_train", type=int)
    parser.add_argument("n_test", type=int)
    args = parser.parse_args(argv)
    if args.n_train < 1 or args.n_test < 1:
        parser.error("N_TRAIN and N_TEST must be positive")
    build(args.source, args.out, args.n_train, args.n_test)


if __name__ == "__main__":
    sys.exit(main())
