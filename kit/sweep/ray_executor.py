"""The Ray executor: the same jobs as Ray tasks on an existing cluster (``ray.init(address=...)``).

Every node must see the data, the runs folder and the kit at the same paths (a shared file system, one
installation). A task runs the job's fold-train in a child process on whatever node Ray picks and appends its
output to the job's log in ``RUNS/.sweep/logs``, which the driver follows for progress. A task whose node dies
is retried by Ray (``max_retries``) on another node; fold-train resumes from the fold's ``last.pt``, after the
task has taken over the dead attempt's locks (``kit.sweep.takeover``). A stop (Ctrl-C) cancels the tasks: each
sends SIGTERM to its fold-train, which saves a resumable checkpoint.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

from kit.errors import KitError
from kit.runs import RunDir
from kit.sweep.job import STOP_GRACE_SECONDS, Job, Note, Outcome, Start, child_env, marker, run_job
from kit.sweep.progress import Tracker
from kit.sweep.records import JobRecord, log_file, read_record, write_record
from kit.sweep.stop import StopSignal, stop_on_signals
from kit.sweep.takeover import take_over_dead_locks


def _import_ray():
    try:
        import ray
    except ImportError:
        raise KitError("--executor ray: Ray is not installed (pip install -e '.[sweep]')") from None
    return ray


CONNECT_TIMEOUT_SECONDS = 10.0
# Connects to the cluster's GCS as ray.init would, in a child process that can be killed: Ray's own client retries
# an address where nothing answers for about 40 s, and ray.init for ever.
_PROBE = """
import sys
import ray._raylet
from ray._private import services
ray._raylet.GcsClient(address=services.canonicalize_bootstrap_address_or_die(sys.argv[1]))
"""


def _split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` or anything else."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Check within ``timeout`` seconds that a Ray cluster answers at ``address``.

    Raises:
        KitError: one line naming the address, what happened and the remedy (nothing listens there, it does not
            answer in time, or it is not a Ray cluster).
    """
    started = time.monotonic()
    remedy = "start it (ray start --head --port PORT on the head node) or fix --address / $RAY_ADDRESS"
    parts = _split_address(address)
    if parts is not None:
        try:
            socket.create_connection(parts, timeout=timeout).close()
        except TimeoutError:
            within = f"no answer within {timeout:g} s (--connect-timeout)"
            raise KitError(f"--address {address}: {within}; {remedy}") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise KitError(f"--address {address}: no Ray cluster there ({reason}); {remedy}") from None
    if address.startswith("ray://"):
        return  # a Ray Client server: ray.init checks the rest
    left = max(1.0, timeout - (time.monotonic() - started))
    try:
        command = [sys.executable, "-c", _PROBE, address]
        probe = subprocess.run(command, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise KitError(
            f"--address {address}: no Ray cluster answered within {timeout:g} s (--connect-timeout); {remedy}"
        ) from None
    if probe.returncode != 0:
        lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
        reason = lines[-1][:200] if lines else f"exit code {probe.returncode}"
        raise KitError(f"--address {address}: not a Ray cluster ({reason}); {remedy}")


def _node_alive(node_id: str) -> bool | None:
    ray = _import_ray()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return bool(node.get("Alive"))
    return None


def ray_task(job_data: dict, sweep_id: str, cpus: int) -> dict:
    """The body of a job's Ray task: take over a dead attempt's locks, then run the job's fold-train."""
    ray = _import_ray()
    job = Job.from_dict(job_data)
    context = ray.get_runtime_context()
    node_id, host = context.get_node_id(), socket.gethostname()
    previous = read_record(job.runs_dir, job.run, job.fold)
    attempt = previous.attempt + 1 if previous and previous.sweep == sweep_id and previous.state == "running" else 1
    left_running = previous if previous is not None and previous.state == "running" else None
    notes = take_over_dead_locks(RunDir.under(job.runs_dir, job.run), job.fold, left_running, host, _node_alive)
    gpus = [str(g) for g in ray.get_gpu_ids()]
    ip = ray.util.get_node_ip_address()
    where = f"node {node_id[:8]} ({host}, {ip}), " + (f"GPU {','.join(gpus)}" if gpus else f"CPU x{cpus}")
    record = JobRecord(
        run=job.run, fold=job.fold, state="running", sweep=sweep_id, attempt=attempt, node=node_id, host=host
    )
    outcome = run_job(
        job.command(),
        child_env(cpus),
        log_file(job.runs_dir, job.run, job.fold),
        header=[marker(Start(attempt=attempt, where=where, node=node_id, host=host))]
        + [marker(Note(text=note)) for note in notes],
        on_start=lambda pid: write_record(job.runs_dir, record.model_copy(update={"pid": pid, "started": time.time()})),
        new_session=False,
        death_signal="KILL",  # a retry may start at once: the dead attempt's fold-train must be gone by then
        catch_interrupt=True,
    )
    return outcome.to_dict()


class LogTail:
    """New complete lines of a file that another process (on another node, maybe) appends to."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0
        self._rest = b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


def _one_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RayExecutor:
    """Runs jobs as Ray tasks on the cluster at ``address``.

    Args:
        address: the cluster (``HOST:PORT`` of its head, or ``auto``).
        cpus_per_job: CPUs each task reserves (its fold-train's threads).
        gpus_per_job: GPUs each task reserves; None: 1 when the cluster has GPUs, else 0.
        retries: how often a task whose worker or node died is retried.
        jobs: the most tasks submitted at once (None: all; Ray runs as many as the cluster's resources fit).
        connect_timeout: seconds ``check`` waits for the cluster to answer.
    """

    def __init__(
        self,
        address: str,
        cpus_per_job: int = 1,
        gpus_per_job: float | None = None,
        retries: int = 3,
        jobs: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ):
        self.address = address
        self.cpus_per_job = cpus_per_job
        self.gpus_per_job = gpus_per_job
        self.retries = retries
        self.jobs = jobs
        self.connect_timeout = connect_timeout

    def check(self) -> None:
        """Fail within ``connect_timeout`` seconds, in one line, when Ray is missing or no cluster answers."""
        _import_ray()
        check_address(self.address, self.connect_timeout)

    def describe(self) -> str:
        return f"ray executor: cluster {self.address}, {self.cpus_per_job} CPU(s) per job, {self.retries} retries"

    def _connect(self):
        ray = _import_ray()
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise KitError(f"--address {self.address}: no Ray cluster reachable ({_one_line(exc)})") from None
        return ray

    def _gpus(self, ray) -> float:
        if self.gpus_per_job is not None:
            return self.gpus_per_job
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    def _check_fits(self, ray, gpus: float) -> None:
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        if not any(r.get("CPU", 0) >= self.cpus_per_job and r.get("GPU", 0) >= gpus for r in nodes):
            largest = max((r.get("CPU", 0) for r in nodes), default=0)
            raise KitError(
                f"--cpus-per-job {self.cpus_per_job} / GPUs {gpus:g}: no node of the cluster at {self.address} has "
                f"that much (largest: {largest:g} CPUs)"
            )

    def run(self, jobs: list[Job], tracker: Tracker, stop: StopSignal) -> None:
        """Run ``jobs`` as tasks until all ended (or ``stop``); every state change goes to ``tracker``."""
        if not jobs:
            return
        ray = self._connect()
        try:
            gpus = self._gpus(ray)
            self._check_fits(ray, gpus)
            task = ray.remote(ray_task).options(
                num_cpus=self.cpus_per_job, num_gpus=gpus, max_retries=self.retries, retry_exceptions=False
            )
            with stop_on_signals(stop):  # ray.init replaced the SIGTERM handler with one that exits
                self._loop(ray, task, jobs, tracker, stop)
        finally:
            ray.shutdown()

    def _loop(self, ray, task, jobs: list[Job], tracker: Tracker, stop: StopSignal) -> None:
        pending = list(jobs)
        running: dict = {}  # ObjectRef -> (job, tail)
        cancelled_at: float | None = None
        forced = False
        while pending or running:
            while pending and not stop and (self.jobs is None or len(running) < self.jobs):
                job = pending.pop(0)
                tail = LogTail(log_file(job.runs_dir, job.run, job.fold))
                running[task.remote(job.to_dict(), tracker.sweep_id, self.cpus_per_job)] = (job, tail)
            if stop and cancelled_at is None:
                cancelled_at = time.monotonic()
                for ref in running:
                    ray.cancel(ref)
                for job in pending:
                    tracker.finished(job, None)
                pending.clear()
            overdue = cancelled_at is not None and time.monotonic() - cancelled_at > STOP_GRACE_SECONDS + 30
            if (overdue or stop.level > 1) and not forced:
                forced = True
                for ref in running:
                    ray.cancel(ref, force=True)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5) if running else ([], [])
            for job, tail in running.values():
                for line in tail.read():
                    tracker.line(job, line)
            for ref in ready:
                job, tail = running.pop(ref)
                for line in tail.read():
                    tracker.line(job, line)
                self._finish(ray, ref, job, tracker)

    @staticmethod
    def _finish(ray, ref, job: Job, tracker: Tracker) -> None:
        try:
            outcome = Outcome(**ray.get(ref))
        except ray.exceptions.TaskCancelledError:
            status = tracker.jobs.get((job.run, job.fold))
            started = status is not None and status.state == "running"
            tracker.finished(job, Outcome(143, None, 0.0) if started else None)
            return
        except ray.exceptions.RayError as exc:
            tracker.finished(job, None, error=_one_line(exc))
            return
        tracker.finished(job, outcome)
