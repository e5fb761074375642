"""Run one command and record its wall time and peak memory: ``scale_step.py TABLE STEP -- COMMAND...``.

Peak memory is the largest total resident memory of the command's whole process tree (sampled every 0.1 s from
``/proc``, workers included), or the largest single process's peak (``ru_maxrss``) if that is larger. A row
``STEP<TAB>seconds<TAB>peak GiB<TAB>exit code`` is appended to TABLE; the command's output passes through. Exits
with the command's exit code. Standard library only, so it runs wherever ``benchmarks/scale.sh`` does.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids = []
    for task in tasks:
        try:
            kids += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return kids


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
        todo += _children(pid)
    return total


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    table, step, command = Path(argv[0]), argv[1], argv[3:]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, _tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    with open(table, "a") as f:
        f.write(f"{step}\t{seconds:.1f}\t{peak / 2**30:.2f}\t{code}\n")
    print(f"[scale] {step}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB, exit {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
