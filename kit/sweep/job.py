"""One sweep job: ``python -m kit fold-train PIPELINE --data DIR --out RUNS --folds K`` in a child process.

``run_job`` starts the child (through ``kit.sweep.launch``, so that it dies with its parent), appends its output
to the job's log, hands each line to a callback, and stops it on request: SIGTERM first (fold-train saves a
resumable checkpoint and exits 143), SIGKILL when asked twice or after a grace period.

The child's progress comes as records (``kit.progress``), one JSON object a line on a pipe of its own
(``$KIT_PROGRESS_FD``), never parsed from its console text. Each goes into the log as a ``#sweep`` line beside the
sweep's own (``Start``, ``Note``, ``End``), so that whoever follows the log (the driver of a Ray sweep) reads the
same records with ``read_event``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kit.progress import PROGRESS_FD, EpochRecord, ErrorRecord, FoldRecord, Record, RunRecord, read_record
from kit.sweep.stop import StopSignal

MARKER = "#sweep "  # a line the sweep writes into a job's log: MARKER + JSON
INTERRUPTED = (128 + signal.SIGTERM, 128 + signal.SIGINT)
STOP_GRACE_SECONDS = 300.0  # after SIGTERM, how long a job may take to save its checkpoint before SIGKILL


class _Marker(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Start(_Marker):
    """An attempt of the job starts (the first line of each attempt in its log)."""

    event: Literal["start"] = "start"
    attempt: int = 1
    where: str = ""  # the slot or node, in words
    node: str | None = None  # Ray node id
    host: str | None = None


class Note(_Marker):
    """Something the sweep did for the job (took over a dead attempt's locks)."""

    event: Literal["note"] = "note"
    text: str


class End(_Marker):
    """The attempt's process ended."""

    event: Literal["end"] = "end"
    returncode: int


JobEvent = Annotated[
    Start | Note | End | EpochRecord | FoldRecord | RunRecord | ErrorRecord, Field(discriminator="event")
]
_EVENTS: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def marker(event: Start | Note | End | Record) -> str:
    """The ``#sweep`` line of ``event`` for the job's log."""
    return MARKER + json.dumps(event.model_dump(mode="json", exclude_none=True))


def read_event(line: str) -> JobEvent | None:
    """The event of a ``#sweep`` line of a job's log (the sweep's or the child's records); None for other lines."""
    line = line.rstrip("\n")
    if not line.startswith(MARKER):
        return None
    try:
        return _EVENTS.validate_json(line[len(MARKER) :])
    except ValidationError:
        return None


def relay_records(stream: IO[bytes], take: Callable[[str], None]) -> None:
    """Each record the child writes to ``stream`` (its progress pipe), as a ``#sweep`` line to ``take``."""
    for raw in stream:
        record = read_record(raw)
        if record is not None:
            take(marker(record))


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
    error: str | None  # its last error record (else its last output line) when it failed
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
    env.pop(PROGRESS_FD, None)  # run_job gives each job a progress pipe of its own
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
    """Run ``command`` to its end; its output (stdout and stderr) and its records are appended to ``log_path``.

    The child gets the write end of a pipe as ``$KIT_PROGRESS_FD``: each record it writes there (``kit.progress``)
    becomes a ``#sweep`` line of the log, in the order the records and output lines come.

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
    errors: list[str] = []
    lock = threading.Lock()
    with open(log_path, "a", encoding="utf-8") as log:

        def take(line: str) -> None:
            with lock:
                log.write(line if line.endswith("\n") else line + "\n")
                log.flush()
                lines.append(line.rstrip("\n"))
                del lines[:-50]
                event = read_event(line) if line.startswith(MARKER) else None
                if isinstance(event, ErrorRecord) and not event.interrupted:
                    errors.append(event.text)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        for line in [header] if isinstance(header, str) else header or []:
            take(line)
        records, records_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kit.sweep.launch", death_signal, *command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env | {PROGRESS_FD: str(records_w)},
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                start_new_session=new_session,
                pass_fds=(records_w,),
            )
        except BaseException:
            os.close(records)
            raise
        finally:
            os.close(records_w)  # the child holds it now: the pipe ends when the child (and its children) end
        if on_start is not None:
            on_start(proc.pid)

        def read_output() -> None:
            for line in proc.stdout:
                take(line)

        def read_records() -> None:
            with open(records, "rb") as stream:
                relay_records(stream, take)

        readers = [
            threading.Thread(target=read_output, name=f"log {log_path.name}", daemon=True),
            threading.Thread(target=read_records, name=f"records {log_path.name}", daemon=True),
        ]
        for reader in readers:
            reader.start()
        returncode = _wait(proc, stop, catch_interrupt)
        for reader in readers:
            reader.join(timeout=10)
        take(marker(End(returncode=returncode)))
    return Outcome(returncode, _error(lines[:-1], errors, returncode), time.monotonic() - started, proc.pid)


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


def _error(lines: list[str], errors: list[str], returncode: int) -> str | None:
    if returncode == 0:
        return None
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
