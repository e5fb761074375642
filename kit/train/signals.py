"""SIGTERM and SIGINT stop training at the next step boundary, after a resumable checkpoint, instead of killing it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from kit.errors import Interrupted

__all__ = ["Interrupted", "StopRequest", "stop_on_signals"]


class StopRequest:
    """Set by the signal handlers; the training loop polls it between steps (a Python flag: no device sync)."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT set the yielded flag; a second signal acts at once (default handling).

    Outside the main thread (where handlers can't be installed) the flag is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum, frame):
        if request:  # asked twice: stop now
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        request.signum = signum

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
