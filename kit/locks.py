"""Lock files that name their holder (process id, host, start time): a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on {self.host} (since {when})"


def read_lock(path: Path) -> LockHolder | None:
    try:
        data = json.loads(path.read_text())
        return LockHolder(int(data["pid"]), str(data["host"]), float(data["started"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder(-1, "?", path.stat().st_mtime if path.exists() else 0.0)  # garbage: treated as stale


def acquire_lock(path: Path, what: str) -> None:
    """Create ``path`` exclusively for this process; a lock of a dead process on this host is taken over.

    Raises:
        KitError: a live process (or one on another host, which can't be checked) holds it.
    """
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder is None:
                continue
            if holder.pid == me["pid"] and holder.host == me["host"]:
                return
            if holder.host == me["host"] and (holder.pid < 0 or not process_alive(holder.pid)):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise KitError(
                f"{path.parent}: {what} is being trained by {holder.describe()}; wait for it or choose "
                f"other --folds (delete {path.name} if that process is gone)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise KitError(f"{path}: could not take the lock")


def wait_for_lock(path: Path, what: str, seconds: float, poll: float = 0.2) -> None:
    """``acquire_lock``, waiting up to ``seconds`` for a live holder to let go (a short critical section elsewhere).

    Raises:
        KitError: still held after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            return acquire_lock(path, what)
        except KitError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)


def release_lock(path: Path) -> None:
    holder = read_lock(path)
    if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
        path.unlink(missing_ok=True)
