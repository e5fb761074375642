"""The state of every job of a sweep: one progress line per change, the job records, the final table's rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kit.progress import EpochRecord, ErrorRecord
from kit.sweep.job import Job, Note, Outcome, Start, read_event
from kit.sweep.records import JobRecord, JobState, read_record, write_record

if TYPE_CHECKING:  # the plans come from the driver; a Ray task imports this module without kit.train (torch)
    from kit.train.plan import RunPlan

EPOCH_LINE_SECONDS = 2.0  # at most one epoch line per job this often (and its last epoch's): tiny epochs are many


@dataclass
class JobStatus:
    """What is known of one (run, fold) job."""

    run: str
    fold: int
    state: JobState | str  # queued, running, done, failed, interrupted; skipped (finished earlier), not started
    where: str = ""  # the slot or node of its last attempt
    attempts: int = 0
    epoch: str = ""  # e.g. "3/10", the last epoch line
    seconds: float | None = None
    fold_mse: float | None = None
    error: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.run} fold {self.fold}"


class Tracker:
    """Turns what executors report (lines of a job's log, its end) into states, progress lines and records.

    A fold is done when its run folder says so with the identity of the run's plan (``kit.train.plan``), the one its
    fold-train planned too. Thread-safe: the local executor reports from one thread per slot.
    """

    def __init__(
        self,
        runs_dir,
        sweep_id: str,
        plans: dict[str, RunPlan],
        emit: Callable[[str], None],
    ) -> None:
        self.runs_dir = runs_dir
        self.sweep_id = sweep_id
        self.plans = plans
        self._emit = emit
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self.jobs: dict[tuple[str, int], JobStatus] = {}
        self._finished_runs: set[str] = set()
        self._epoch_lines: dict[tuple[str, int], float] = {}  # when each job's last epoch line was printed

    def emit(self, text: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        with self._lock:
            self._emit(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {text}")

    def _status(self, run: str, fold: int) -> JobStatus:
        return self.jobs.setdefault((run, fold), JobStatus(run, fold, "queued"))

    def skipped(self, run: str, fold: int, summary_mse: float | None) -> None:
        with self._lock:
            status = self._status(run, fold)
            status.state, status.fold_mse = "skipped", summary_mse
            self.emit(f"{status.label}: finished earlier, skipped")

    def queued(self, job: Job) -> None:
        with self._lock:
            status = self._status(job.run, job.fold)
            status.state = "queued"
            write_record(self.runs_dir, JobRecord(run=job.run, fold=job.fold, state="queued", sweep=self.sweep_id))
            self.emit(f"{status.label}: queued")

    def failed_before_start(self, run: str, fold: int, error: str) -> None:
        with self._lock:
            status = self._status(run, fold)
            status.state, status.error = "failed", error
            write_record(self.runs_dir, JobRecord(run=run, fold=fold, state="failed", sweep=self.sweep_id, error=error))
            self.emit(f"{status.label}: failed: {error}")

    def line(self, job: Job, text: str) -> None:
        """One line of the job's log: only its ``#sweep`` lines (the sweep's markers, the child's records) count."""
        event = read_event(text)
        if event is None:
            return
        with self._lock:
            status = self._status(job.run, job.fold)
            if isinstance(event, Start):
                status.state, status.where = "running", event.where
                status.attempts = event.attempt
                again = f" (attempt {status.attempts})" if status.attempts > 1 else ""
                self.emit(f"{status.label}: running on {status.where}{again}")
            elif isinstance(event, Note):
                self.emit(f"{status.label}: {event.text}")
            elif isinstance(event, EpochRecord) and event.fold == job.fold:
                status.epoch = f"{event.epoch}/{event.epochs}"
                now, last = time.monotonic(), self._epoch_lines.get((job.run, job.fold), -EPOCH_LINE_SECONDS)
                if now - last >= EPOCH_LINE_SECONDS or event.epoch == event.epochs:
                    self._epoch_lines[(job.run, job.fold)] = now
                    self.emit(f"{status.label}: epoch {status.epoch}, valid MSE {event.valid_mse:.3f}")
            elif isinstance(event, ErrorRecord) and not event.interrupted:
                status.error = event.text

    def finished(self, job: Job, outcome: Outcome | None, error: str | None = None) -> JobStatus:
        """The job's process ended (``outcome``), or the job ended without one (``error``: lost, cancelled)."""
        with self._lock:
            status = self._status(job.run, job.fold)
            status.seconds = outcome.seconds if outcome is not None else status.seconds
            mse = self._fold_mse(job)
            if mse is not None:
                status.state, status.fold_mse, status.error = "done", mse, None
                if outcome is not None and outcome.returncode != 0:
                    status.note = f"fold finished, then: {outcome.error}"
            elif outcome is not None and outcome.interrupted:
                status.state = "interrupted"
            elif outcome is None and error is None:
                status.state = "not started"
            else:
                status.state = "failed"
                status.error = (outcome.error if outcome is not None else None) or error or "failed"
            self._record(status, outcome)
            self.emit(self._describe_end(status))
            if status.state == "done":
                self._check_run(job.run)
            return status

    def _describe_end(self, status: JobStatus) -> str:
        took = f" in {status.seconds:.0f}s" if status.seconds is not None else ""
        if status.state == "done":
            note = f" ({status.note})" if status.note else ""
            return f"{status.label}: done{took}, fold MSE {status.fold_mse:.4f}{note}"
        if status.state == "interrupted":
            return f"{status.label}: interrupted{took} (checkpoint saved: the same command resumes it)"
        if status.state == "not started":
            return f"{status.label}: not started"
        return f"{status.label}: failed{took}: {status.error}"

    def _record(self, status: JobStatus, outcome: Outcome | None) -> None:
        previous = read_record(self.runs_dir, status.run, status.fold)
        base = previous.model_dump() if previous is not None and previous.sweep == self.sweep_id else {}
        state = status.state if status.state in ("done", "failed", "interrupted") else "queued"
        write_record(
            self.runs_dir,
            JobRecord(
                **(
                    base
                    | {
                        "run": status.run,
                        "fold": status.fold,
                        "state": state,
                        "sweep": self.sweep_id,
                        "attempt": max(status.attempts, 1),
                        "seconds": status.seconds,
                        "error": status.error if state == "failed" else None,
                        "pid": outcome.pid if outcome is not None and outcome.pid else base.get("pid", 0),
                    }
                )
            ),
        )

    def _fold_mse(self, job: Job) -> float | None:
        """The fold's MSE when it is finished with the identity of this sweep's run, else None."""
        plan = self.plans.get(job.run)
        summary = plan.finished_folds().get(job.fold) if plan is not None else None
        return summary.mse if summary is not None else None

    def _check_run(self, run: str) -> None:
        if run in self._finished_runs:
            return
        plan = self.plans.get(run)
        metrics = plan.finished_metrics() if plan is not None else None
        if metrics is not None:
            self._finished_runs.add(run)
            self.emit(f"{run}: finished, OOF MSE {metrics.oof_mse:.4f}")
