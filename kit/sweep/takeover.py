"""Taking over the locks of a job whose node died, before its retry starts (on another node, usually).

A fold lock (``foldK/.lock``) names the process and host that hold it. fold-train takes over a lock whose process
is gone only on its own host: a process on another host can't be checked. A Ray retry of a job whose node died
runs on another node, where it would find its own previous attempt's lock and refuse. So before the retry starts
its fold-train, the task looks at the fold's lock and the run's (the last fold assembles the run under
``RUNS/NAME/.lock``) and removes one only when both hold:

1. its holder (host, process id) is the fold-train that this job's previous attempt started, as the job's record
   says (``RUNS/.sweep/jobs/NAME.foldK.json``, written by that attempt as soon as its child started);
2. the cluster lists that attempt's node as dead (the GCS declares a node dead once its health checks failed;
   the task waits for that, bounded, while the node still shows as alive).

A holder on the task's own host is left to fold-train, which checks the process itself (the task first waits,
bounded, for that process to be gone: the launcher kills it when its Ray worker dies). A lock of anything else
(a fold-train started by hand, a job of another cluster, a node still alive) stays: fold-train then refuses with
its one-line message naming the holder, and the job fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kit.locks import LockHolder, process_alive, read_lock
from kit.runs import LOCK_FILE, RunDir
from kit.sweep.records import JobRecord

NODE_DEATH_WAIT_SECONDS = 120.0  # how long a retry waits for the cluster to declare the previous node dead


def _wait(condition: Callable[[], bool], seconds: float, poll: float, sleep: Callable[[float], None]) -> bool:
    """Whether ``condition`` held within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        sleep(poll)
    return True


def take_over_dead_locks(
    run_dir: RunDir,
    fold: int,
    previous: JobRecord | None,
    host: str,
    node_alive: Callable[[str], bool | None],
    wait_seconds: float = NODE_DEATH_WAIT_SECONDS,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Remove the fold's and the run's locks held by this job's previous attempt if that attempt's node is dead.

    Args:
        run_dir: the job's run.
        fold: the job's fold.
        previous: the job's record as the previous attempt left it (None: no previous attempt known).
        host: this task's host name.
        node_alive: True for a live node, False for one the cluster lists as dead, None for one it doesn't know.
        wait_seconds: how long to wait for a node still listed alive to be declared dead (or, on this host, for
            the previous attempt's process to be gone).

    Returns:
        One line per lock taken over, for the job's log.
    """
    if previous is None or not previous.pid or not previous.host:
        return []
    notes = []
    for lock in (run_dir.fold_dir(fold) / LOCK_FILE, run_dir.path / LOCK_FILE):
        holder = read_lock(lock)
        if holder is None or (holder.host, holder.pid) != (previous.host, previous.pid):
            continue  # free, or not our previous attempt's: fold-train decides
        if holder.host == host:
            _wait(lambda holder=holder: not process_alive(holder.pid), wait_seconds, poll, sleep)
            continue  # fold-train takes over the lock of a dead process on its own host
        if not _wait(lambda: node_alive(previous.node) is not True, wait_seconds, poll, sleep):
            continue  # the node still shows as alive: its fold-train may be running
        if node_alive(previous.node) is False and _same_holder(lock, holder):
            lock.unlink(missing_ok=True)
            notes.append(f"took over {lock} from {holder.describe()}: its node {previous.node[:12]} is dead")
    return notes


def _same_holder(lock: Path, holder: LockHolder) -> bool:
    current = read_lock(lock)
    return current is not None and (current.host, current.pid, current.started) == (
        holder.host,
        holder.pid,
        holder.started,
    )
