"""One sweep job: ``python -m kit fold-train PIPELINE --data DIR --out RUNS --folds K`` in a child process.

``run_job`` starts the child (through ``kit.sweep.launch``, so that it dies with its parent), appends its output
to the job's log, hands each line to a callback, and stops it on request: SIGTERM first (fold-train saves a
resumable checkpoint and exits 143), SIGKILL when asked twice or after a grace period.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kit.sweep.stop import StopSignal

MARKER = "#sweep "  # a line the sweep writes into a job's log: MARKER + JSON
EPOCH_LINE = re.compile(r"^fold (\d+) epoch (\d+)/(\d+)\s+loss (\S+)\s+valid MSE (\S+)")
ERROR_LINE = re.compile(r"^error: (.*)")
INTERRUPTED = (128 + signal.SIGTERM, 128 + signal.SIGINT)
STOP_GRACE_SECONDS = 300.0  # after SIGTERM, how long a job may take to save its checkpoint before SIGKILL


@dataclass(frozen=True)
class Job:
    """Train fold ``fold`` of run ``run`` (all paths absolute: they must mean the same on every node)."""

    run: str
    fold: int
    pipeline_file: Path  # the resolved pipeline, RUNS/.sweep/NAME.yaml
    data_dir: Path
    runs_dir: Path
    workspace: Path | None = None
    flags: tuple[str, ...] = ()  # fold-train options every job of the sweep gets (--allow-mixed, --skip-corrupt)

    @property
    def label(self) -> str:
        return f"{self.run} fold {self.fold}"

    def command(self, python: str | None = None) -> list[str]:
        """The fold-train command line of the job."""
        command = [python or sys.executable, "-m", "kit", "fold-train", str(self.pipeline_file)]
        command += ["--data", str(self.data_dir), "--out", str(self.runs_dir), "--folds", str(self.fold)]
        command += ["--workspace", str(self.workspace)] if self.workspace is not None else []
        return command + list(self.flags)

    def to_dict(self) -> dict:
        data = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self).items()}
        return data | {"flags": list(self.flags)}

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        paths = ("pipeline_file", "data_dir", "runs_dir", "workspace")
        job = {key: (Path(v) if key in paths and v is not None else v) for key, v in data.items()}
        return cls(**job | {"flags": tuple(data.get("flags", ()))})


@dataclass(frozen=True)
class Outcome:
    """How a job's process ended."""

    returncode: int
    error: str | None  # its last ``error:`` line (else its last line) when it failed
    seconds: float
    pid: int = 0

    @property
    def interrupted(self) -> bool:
        return self.returncode in INTERRUPTED

    def to_dict(self) -> dict:
        return asdict(self)


def child_env(threads: int, gpu: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: ``threads`` CPU threads (torch reads OMP_NUM_THREADS), one GPU or none.

    Args:
        threads: CPU threads of the job (concurrent jobs on one machine split its cores).
        gpu: CUDA device id for ``CUDA_VISIBLE_DEVICES``; None keeps the inherited value (Ray sets it per task).
        base: the environment to start from (default: this process's).
    """
    env = dict(os.environ if base is None else base)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
        COLUMNS="240",  # rich wraps at 80 columns off a terminal: keep epoch and error lines whole
        NO_ALBUMENTATIONS_UPDATE="1",
    )
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def marker(event: str, **fields) -> str:
    """A ``#sweep`` line for the job's log."""
    return MARKER + json.dumps({"event": event, **fields})


def parse_line(line: str) -> dict | None:
    """What a line of a job's log says: a ``#sweep`` marker, an epoch, an error; None for anything else."""
    line = line.rstrip("\n")
    if line.startswith(MARKER):
        try:
            data = json.loads(line[len(MARKER) :])
        except ValueError:
            return None
        return data if isinstance(data, dict) and "event" in data else None
    if match := EPOCH_LINE.match(line):
        fold, epoch, epochs, _, valid = match.groups()
        return {"event": "epoch", "fold": int(fold), "epoch": int(epoch), "epochs": int(epochs), "valid_mse": valid}
    if match := ERROR_LINE.match(line):
        return {"event": "error", "text": match.group(1).strip()}
    return None


def run_job(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    header: str | list[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
    new_session: bool = True,
    death_signal: str = "TERM",
    catch_interrupt: bool = False,
) -> Outcome:
    """Run ``command`` to its end; its output (stdout and stderr) is appended to ``log_path`` line by line.

    Args:
        header: first lines for the log (and ``on_line``), e.g. ``marker`` lines.
        on_line: called with every line, from a reader thread.
        on_start: called with the child's process id once it started.
        stop: polled: level 1 sends SIGTERM, level 2 (or the grace period after SIGTERM) SIGKILL.
        new_session: start the child in its own session, so a terminal's Ctrl-C reaches only the sweep.
        death_signal: what the child gets when this process (or thread) dies (``kit.sweep.launch``).
        catch_interrupt: a KeyboardInterrupt in the wait (a cancelled Ray task) asks the child to stop.
    """
    stop = stop if stop is not None else StopSignal()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lines: list[str] = []
    with open(log_path, "a", encoding="utf-8") as log:

        def take(line: str) -> None:
            log.write(line if line.endswith("\n") else line + "\n")
            log.flush()
            lines.append(line.rstrip("\n"))
            del lines[:-50]
            if on_line is not None:
                on_line(line.rstrip("\n"))

        for line in [header] if isinstance(header, str) else header or []:
            take(line)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kit.sweep.launch", death_signal, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=new_session,
        )
        if on_start is not None:
            on_start(proc.pid)

        def read() -> None:
            for line in proc.stdout:
                take(line)

        reader = threading.Thread(target=read, name=f"log {log_path.name}", daemon=True)
        reader.start()
        returncode = _wait(proc, stop, catch_interrupt)
        reader.join(timeout=10)
        take(marker("end", returncode=returncode))
    return Outcome(returncode, _error(lines[:-1], returncode), time.monotonic() - started, proc.pid)


def _wait(proc: subprocess.Popen, stop: StopSignal, catch_interrupt: bool) -> int:
    sent, termed_at = 0, 0.0
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            if not catch_interrupt:
                proc.kill()
                raise
            stop.request()
        if stop.level > sent or (sent == 1 and time.monotonic() - termed_at > STOP_GRACE_SECONDS):
            sent = max(stop.level, sent + 1)
            try:
                proc.send_signal(signal.SIGTERM if sent == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass
            termed_at = time.monotonic()


def _error(lines: list[str], returncode: int) -> str | None:
    if returncode == 0:
        return None
    errors = [event["text"] for line in lines if (event := parse_line(line)) and event["event"] == "error"]
    if errors:
        return errors[-1]
    tail = [line.strip() for line in lines if line.strip() and not line.startswith(MARKER)]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}" + (f" after: {tail[-1]}" if tail else "")
    return tail[-1] if tail else f"exit code {returncode}"
