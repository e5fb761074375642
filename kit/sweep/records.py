"""What a sweep keeps beside its runs, in ``RUNS/.sweep/``: never part of a run, read by ``kit runs`` and retries.

- ``NAME.yaml``: the resolved pipeline every job of the run trains (``kit fold-train RUNS/.sweep/NAME.yaml``);
- ``logs/NAME.foldK.log``: the job's output, every attempt appended (each starts with a ``#sweep`` line);
- ``jobs/NAME.foldK.json``: the job's record (``JobRecord``): where its current attempt runs (node, host, process),
  then how it ended (state, error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from kit.io import write_json

SWEEP_DIR = ".sweep"

JobState = Literal["queued", "running", "done", "failed", "interrupted"]


class JobRecord(BaseModel):
    """``RUNS/.sweep/jobs/NAME.foldK.json``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run: str
    fold: int
    state: JobState
    sweep: str = ""  # id of the sweep invocation that wrote it
    attempt: int = 1  # attempts of that invocation (Ray retries after a node died)
    node: str = ""  # Ray node id, or "local"
    host: str = ""  # host name of the process training it (what its fold lock names)
    pid: int = 0  # that process (the fold-train child)
    started: float = 0.0  # time.time() of the attempt's start
    seconds: float | None = None  # wall time of the job, once it ended
    error: str | None = None  # the one-line error of a failed job


def sweep_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / SWEEP_DIR


def pipeline_file(runs_dir: str | Path, run: str) -> Path:
    return sweep_dir(runs_dir) / f"{run}.yaml"


def log_file(runs_dir: str | Path, run: str, fold: int) -> Path:
    return sweep_dir(runs_dir) / "logs" / f"{run}.fold{fold}.log"


def record_file(runs_dir: str | Path, run: str, fold: int) -> Path:
    return sweep_dir(runs_dir) / "jobs" / f"{run}.fold{fold}.json"


def write_record(runs_dir: str | Path, record: JobRecord) -> None:
    write_json(record_file(runs_dir, record.run, record.fold), record.model_dump(mode="json"))


def read_record(runs_dir: str | Path, run: str, fold: int) -> JobRecord | None:
    """The job's record, or None when there is none or it is unreadable (a record is advisory)."""
    path = record_file(runs_dir, run, fold)
    try:
        return JobRecord.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def read_records(runs_dir: str | Path) -> list[JobRecord]:
    """Every readable job record of the runs folder."""
    folder = sweep_dir(runs_dir) / "jobs"
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(JobRecord.model_validate(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return records
