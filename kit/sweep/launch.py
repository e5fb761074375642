"""``python -m kit.sweep.launch SIGNAL COMMAND...``: exec COMMAND so that it gets SIGNAL when its parent dies.

A sweep job's fold-train must not outlive the process that started it (a Ray worker whose node died, a sweep
driver killed outright): an orphan would go on training the fold that a retry takes over. On Linux the kernel
sends the signal (``PR_SET_PDEATHSIG``, kept across exec); elsewhere the command is exec'd unchanged. The exec'd
command keeps this process's id, so a fold lock names the fold-train itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(signum: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        return


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m kit.sweep.launch SIGNAL COMMAND...")
    parent = os.getppid()
    _set_parent_death_signal(signal.Signals[f"SIG{argv[0].upper().removeprefix('SIG')}"])
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(128 + signal.SIGTERM)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
