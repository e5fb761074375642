"""The local executor: N concurrent jobs on this machine, each on its own GPU, or on CPU with the cores split.

Two torch processes that each use every core of a small machine run 10-20x slower than one: on CPU each job gets
``cores // N`` threads (``OMP_NUM_THREADS``, which sets torch's intra-op threads in a fresh process). With CUDA,
slot i gets GPU i modulo the visible GPUs (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from kit.sweep.job import Job, Start, child_env, marker, run_job
from kit.sweep.progress import Tracker
from kit.sweep.records import JobRecord, log_file, write_record
from kit.sweep.stop import StopSignal


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use ([] without CUDA), as ``CUDA_VISIBLE_DEVICES`` names them."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: train on CPU
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


@dataclass(frozen=True)
class Slot:
    index: int
    threads: int
    gpu: str | None  # None: CPU

    def describe(self) -> str:
        device = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        return f"local slot {self.index} ({device}, {self.threads} thread{'s' if self.threads > 1 else ''})"


def plan_slots(jobs: int, cores: int, gpus: list[str]) -> list[Slot]:
    """``jobs`` slots: cores split evenly (at least one thread each), GPUs dealt round-robin."""
    threads = max(1, cores // max(jobs, 1))
    return [Slot(i, threads, gpus[i % len(gpus)] if gpus else None) for i in range(jobs)]


class LocalExecutor:
    """Runs jobs as child processes of this one, ``jobs`` at a time."""

    def __init__(self, jobs: int | None = None, cores: int | None = None, gpus: list[str] | None = None):
        self.gpus = visible_gpus() if gpus is None else gpus
        self.jobs = jobs or max(1, len(self.gpus))
        self.slots = plan_slots(self.jobs, cores or usable_cores(), self.gpus)

    def describe(self) -> str:
        slot = self.slots[0]
        device = f"{len(self.gpus)} GPU(s)" if self.gpus else f"CPU, {slot.threads} thread(s) each"
        return f"local executor: {self.jobs} concurrent job(s), {device}"

    def run(self, jobs: list[Job], tracker: Tracker, stop: StopSignal) -> None:
        """Run ``jobs`` to their end (or until ``stop``); every state change goes to ``tracker``."""
        pending = list(jobs)
        lock = threading.Lock()
        host = socket.gethostname()

        def next_job() -> Job | None:
            with lock:
                return pending.pop(0) if pending and not stop else None

        def work(slot: Slot) -> None:
            while (job := next_job()) is not None:
                record = JobRecord(run=job.run, fold=job.fold, state="running", sweep=tracker.sweep_id, node="local")
                outcome = run_job(
                    job.command(),
                    child_env(slot.threads, slot.gpu),
                    log_file(job.runs_dir, job.run, job.fold),
                    header=marker(Start(attempt=1, where=slot.describe(), host=host)),
                    on_line=lambda text, job=job: tracker.line(job, text),
                    on_start=lambda pid, record=record: write_record(
                        tracker.runs_dir, record.model_copy(update={"host": host, "pid": pid, "started": time.time()})
                    ),
                    stop=stop,
                    new_session=True,
                    death_signal="TERM",
                )
                tracker.finished(job, outcome)

        threads = [threading.Thread(target=work, args=(slot,), name=f"sweep slot {slot.index}") for slot in self.slots]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # the main thread stays responsive to signals
        for job in pending:
            tracker.finished(job, None)
