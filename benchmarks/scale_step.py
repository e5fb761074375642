"""Run one command and record its wall time and peak memory: ``scale_step.py TABLE STEP -- COMMAND...``.

Two peaks of the command's whole process tree (workers included), sampled every 0.1 s from ``/proc``:
- ``peak_gib``: resident memory (RSS), or the largest single process's ``ru_maxrss`` if that is larger. It counts
  the pages of memory-mapped files that were read, which the kernel drops under memory pressure;
- ``anon_gib``: resident anonymous and shared memory (``RssAnon + RssShmem``): what cannot be dropped, so what
  runs a machine or a notebook out of memory. The budgets of ``benchmarks/SCALE.md`` are on this figure.
A row ``STEP<TAB>seconds<TAB>peak GiB<TAB>anon GiB<TAB>exit code`` is appended to TABLE; the command's output passes
through. Exits with the command's exit code. Standard library only, so it runs wherever ``scale.sh`` does.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


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


def _resident(pid: int) -> tuple[int, int]:
    """(RSS, anonymous + shared RSS) of one process in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0) + fields.get("RssShmem", 0)


def _tree_resident(root: int) -> tuple[int, int]:
    """(RSS, anonymous + shared RSS) of ``root`` and all its descendants, in bytes."""
    total, anon, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            rss, rss_anon = _resident(pid)
        except (OSError, ValueError):
            continue
        total, anon = total + rss, anon + rss_anon
        todo += _children(pid)
    return total, anon


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    table, step, command = Path(argv[0]), argv[1], argv[3:]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = peak_anon = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_anon
        while not done.wait(0.1):
            rss, anon = _tree_resident(process.pid)
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    with open(table, "a") as f:
        f.write(f"{step}\t{seconds:.1f}\t{peak / 2**30:.2f}\t{peak_anon / 2**30:.2f}\t{code}\n")
    print(
        f"[scale] {step}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB "
        f"(anonymous {peak_anon / 2**30:.2f}), exit {code}",
        file=sys.stderr,
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
