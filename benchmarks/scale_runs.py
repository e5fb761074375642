"""More runs from one finished run, for ensembling benchmarks: ``scale_runs.py RUN N_NOISY [--links K]``.

``RUN_n1 .. RUN_nN`` are copies of the run whose ``oof.npy`` and ``test.npy`` have seeded Gaussian noise added
(sigma 1 + i px, so the runs differ and a blend has something to weigh); their other files, the folds' arrays
included (blend and stack read only the run's), are hard links to the run's. ``RUN_l1 .. RUN_lK`` share every file
with the run by hard links (free on disk: for ``kit runs`` at many runs). The arrays are streamed in row chunks, so
memory stays bounded at any size. Their ``metrics.json`` is the source's (its OOF MSE is not the noisy arrays'):
blend and stack score from the arrays.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

_CHUNK_ROWS = 4096


def _noisy_copy(source: Path, target: Path, sigma: float, rng: np.random.Generator) -> None:
    array = np.load(source, mmap_mode="r")
    tmp = target.with_name(target.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=array.shape)
    for start in range(0, len(array), _CHUNK_ROWS):
        chunk = np.asarray(array[start : start + _CHUNK_ROWS], dtype=np.float32)
        out[start : start + _CHUNK_ROWS] = chunk + rng.normal(0.0, sigma, chunk.shape).astype(np.float32)
    out.flush()
    del out
    os.replace(tmp, target)


def noisy_run(run: Path, target: Path, sigma: float, seed: int) -> None:
    """Copy ``run`` to ``target`` with noise added to its OOF and test predictions."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for path in sorted(run.rglob("*")):
        out = tmp / path.relative_to(run)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.parent == run and path.name in ("oof.npy", "test.npy"):
            _noisy_copy(path, out, sigma, rng)
        else:
            os.link(path, out)
    os.replace(tmp, target)


def linked_run(run: Path, target: Path) -> None:
    """``target`` holding hard links to every file of ``run``."""
    shutil.copytree(run, target, copy_function=os.link)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("n_noisy", type=int)
    parser.add_argument("--links", type=int, default=0, help="runs that hard-link the source's files")
    args = parser.parse_args(argv)
    if not (args.run / "metrics.json").is_file():
        raise SystemExit(f"{args.run}: not a finished run (no metrics.json)")
    for i in range(1, args.n_noisy + 1):
        noisy_run(args.run, args.run.with_name(f"{args.run.name}_n{i}"), sigma=1.0 + i, seed=i)
    for i in range(1, args.links + 1):
        linked_run(args.run, args.run.with_name(f"{args.run.name}_l{i}"))
    print(f"made {args.n_noisy} noisy and {args.links} linked copies of {args.run}")


if __name__ == "__main__":
    sys.exit(main())
