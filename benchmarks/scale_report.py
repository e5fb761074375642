"""Print scale.sh's step tables side by side, with each step's growth exponent between the first and last size.

    python benchmarks/scale_report.py OUT/N1/steps.tsv OUT/N2/steps.tsv ...

A table's size is its folder's name (N_TRAIN). The exponent b of time ~ N^b (and of peak memory) is
log(value2 / value1) / log(N2 / N1): 1 is linear, 0 constant; steps under 1 s are too noisy to read it from.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path


def _read(path: Path) -> dict[str, tuple[float, float, float]]:
    """step -> (seconds, peak GiB, anonymous GiB)."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {row["step"]: (float(row["seconds"]), float(row["peak_gib"]), float(row["anon_gib"])) for row in rows}


def _exponent(a: float, b: float, ratio: float) -> str:
    if ratio == 1 or a <= 0 or b <= 0:
        return "-"
    return f"{math.log(b / a) / math.log(ratio):.2f}"


def report(paths: list[Path]) -> str:
    sizes = [int(path.parent.name) for path in paths]
    tables = [_read(path) for path in paths]
    steps = list(dict.fromkeys(step for table in tables for step in table))
    head = ["step"]
    for n in sizes:
        head += [f"{n}: s", "GiB", "anon GiB"]
    if len(paths) > 1:
        head += ["time exp", "anon exp"]
    rows = [head]
    for step in steps:
        values = [table.get(step) for table in tables]
        row = [step]
        for v in values:
            row += [f"{v[0]:.1f}", f"{v[1]:.2f}", f"{v[2]:.2f}"] if v else ["-"] * 3
        if len(paths) > 1:
            first, last = values[0], values[-1]
            ratio = sizes[-1] / sizes[0]
            slow_enough = first and last and max(first[0], last[0]) >= 1.0
            row += [
                _exponent(first[0], last[0], ratio) if slow_enough else "-",
                _exponent(first[2], last[2], ratio) if first and last else "-",
            ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(report([Path(p) for p in sys.argv[1:]]))
