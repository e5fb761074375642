"""Stopping a sweep: SIGINT/SIGTERM in the driver ask every job to stop (SIGTERM: a resumable checkpoint first)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopSignal:
    """How often a stop was asked (thread-safe): 1 = stop cleanly (SIGTERM the jobs), 2 = stop now (SIGKILL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.level = 0
        self.signum: int | None = None  # the first signal that asked, None when asked in code

    def request(self, signum: int | None = None) -> None:
        with self._lock:
            self.level += 1
            if self.signum is None:
                self.signum = signum

    def __bool__(self) -> bool:
        return self.level > 0

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: StopSignal) -> Iterator[StopSignal]:
    """Within the block SIGINT and SIGTERM call ``stop.request`` instead of ending the process (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    for sig in sigs:
        signal.signal(sig, lambda signum, frame: stop.request(signum))
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
