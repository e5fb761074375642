"""``run_sweep``: expand a sweep file into (run, fold) jobs, skip finished folds, run the rest, blend what finished.

Each run is planned as its fold-train plans it (``kit.train.plan``: the resolved pipeline, its identity, caches and
finished folds), and each job is ``python -m kit fold-train RUNS/.sweep/NAME.yaml --data DIR --out RUNS --folds K``
with the resolved pipeline: the last fold of a run to finish assembles the run itself. Two last folds finishing
together race for the run's assembly lock; the loser's fold is finished all the same, and a run whose folds are all
finished but that is not assembled is assembled at the end (one more fold-train, which skips the finished folds).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kit.config import dump_pipeline
from kit.data.competition import Competition
from kit.data.derived import ensure_folds
from kit.ensemble.blend import BlendResult, blend_runs
from kit.errors import KitError
from kit.io import write_text
from kit.sweep.job import Job, child_env
from kit.sweep.local import usable_cores
from kit.sweep.progress import JobStatus, Tracker
from kit.sweep.records import pipeline_file
from kit.sweep.spec import Sweep, load_sweep
from kit.sweep.stop import StopSignal
from kit.tracking import track_ensemble, tracker_for
from kit.train.plan import DataState, RunPlan, plan_run


class Executor(Protocol):
    def describe(self) -> str: ...

    def run(self, jobs: list[Job], tracker: Tracker, stop: StopSignal) -> None: ...


@dataclass
class RunOutcome:
    name: str
    oof_mse: float | None  # None: not finished
    folds_done: int
    folds: int


@dataclass
class SweepResult:
    sweep: Sweep
    jobs: list[JobStatus]
    runs: list[RunOutcome]
    blend: BlendResult | None = None
    blend_error: str | None = None
    stopped: StopSignal = field(default_factory=StopSignal)

    @property
    def failed(self) -> list[JobStatus]:
        return [job for job in self.jobs if job.state == "failed"]


def _prepare_caches(
    comp: Competition, plans: list[RunPlan], emit: Callable[[str], None], skip_corrupt: bool = False
) -> None:
    """Build each crop cache the runs with pending jobs need once, here, instead of in several jobs at the same time."""
    caches = {cache.key: cache for plan in plans for cache in plan.caches}
    for key in sorted(caches, key=lambda key: (*key[:3], key[3] != "train")):
        cache = caches[key]
        built = cache.prepare(comp, workers=usable_cores(), skip_corrupt=skip_corrupt)
        emit(f"crop cache {cache.split} {cache.size} px (pad {cache.pad}): {built.path}")


def _assemble(job: Job, emit: Callable[[str], None]) -> None:
    """Assemble a run whose folds are all finished: a fold-train of one of its folds skips it and assembles."""
    emit(f"{job.run}: every fold finished, assembling the run")
    proc = subprocess.run(
        job.command(), env=child_env(usable_cores()), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        emit(f"{job.run}: assembly failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def run_sweep(
    sweep_path: str | Path,
    data_dir: str | Path,
    runs_dir: str | Path,
    executor: Executor,
    overrides: list[str] | None = None,
    submissions_dir: str | Path = "submissions",
    workspace: str | Path | None = None,
    emit: Callable[[str], None] = print,
    stop: StopSignal | None = None,
    allow_mixed: bool = False,
    skip_corrupt: bool = False,
    track: str | None = None,
    tracking_uri: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> SweepResult:
    """Train every unfinished fold of every run of the sweep, then blend the finished runs (if the file says so).

    Args:
        sweep_path: the sweep YAML (``kit.sweep.spec``).
        data_dir: the competition folder (every node must see it at this path).
        runs_dir: where the runs go (``RUNS/NAME``), with the sweep's own files in ``RUNS/.sweep``.
        executor: ``LocalExecutor`` or ``RayExecutor``.
        overrides: ``section.key=value`` for every pipeline of the sweep.
        submissions_dir: where the blend's NAME.csv, .json and .png go (replacing an earlier blend of that name).
        workspace: the data's workspace (``--workspace``), passed on to every job.
        emit: prints one progress line.
        stop: set by signals: stops the jobs cleanly (they resume when the same sweep runs again).
        allow_mixed: passed to every fold-train: accept finished folds of other numerics (CPU threads).
        skip_corrupt: passed to every fold-train: train without the images whose data is corrupt.
        track, tracking_uri: ``--track``/``--tracking-uri`` (``kit.tracking.resolve_uri``; a pipeline's
            ``tracking:`` section counts too): the store is set up here, every job logs its fold to it with the same
            URI, and the blend is logged there as well.
        warn: where a tracking failure's one warning goes (default ``emit``).

    Raises:
        KitError: the sweep file, a pipeline or the data is invalid, or the executor cannot run (a Ray cluster that
            does not answer), before any job starts or cache is built.
    """
    stop = stop if stop is not None else StopSignal()
    sweep = load_sweep(sweep_path, overrides)
    check = getattr(executor, "check", None)
    if check is not None:
        check()  # a cluster that is not there fails now, in bounded time, not after the caches are built
    data_dir, runs_dir = Path(data_dir).absolute(), Path(runs_dir).absolute()
    workspace = Path(workspace).absolute() if workspace is not None else None
    comp = Competition.load(data_dir, workspace=workspace)
    ensure_folds(comp)  # once, here: parallel jobs would each write the default split
    data = DataState.of(comp)
    k = data.k
    plans: dict[str, RunPlan] = {}
    refused: dict[str, str] = {}
    for run in sweep.runs:
        try:  # numerics are those of each job's process (its node, threads): each fold-train checks them itself
            plans[run.name] = plan_run(run.pipeline, comp, runs_dir, data=data)
        except KitError as exc:
            refused[run.name] = str(exc)
    tracker = Tracker(runs_dir, uuid.uuid4().hex[:12], plans, emit)
    emit(f"sweep {sweep.path}: {len(sweep.runs)} run(s) x {k} folds; {executor.describe()}")

    flags = tuple(flag for flag, on in (("--allow-mixed", allow_mixed), ("--skip-corrupt", skip_corrupt)) if on)
    config = next((run.pipeline.tracking for run in sweep.runs if run.pipeline.tracking is not None), None)
    logged = tracker_for(track, tracking_uri, config, runs_dir, warn or emit)  # the store is created once, here
    if logged.on:
        flags += ("--track", "mlflow", "--tracking-uri", logged.uri)
        emit(f"tracking: {logged.uri}")
    elif track is not None:
        flags += ("--track", "none")  # also off in the jobs (a pipeline's tracking section, $KIT_TRACKING_URI)
    jobs: list[Job] = []
    for run in sweep.runs:
        plan = plans.get(run.name)
        path = pipeline_file(runs_dir, run.name)
        write_text(path, dump_pipeline(plan.pipeline if plan is not None else run.pipeline))
        if plan is None:
            for fold in range(k):
                tracker.failed_before_start(run.name, fold, refused[run.name])
            continue
        for fold, summary in plan.folds.finished.items():
            tracker.skipped(run.name, fold, summary.mse)
        jobs += [Job(run.name, fold, path, data_dir, runs_dir, workspace, flags) for fold in plan.folds.to_train]
    if jobs:
        _prepare_caches(comp, [plans[name] for name in dict.fromkeys(job.run for job in jobs)], emit, skip_corrupt)
    for job in jobs:
        tracker.queued(job)
    executor.run(jobs, tracker, stop)

    result = SweepResult(sweep=sweep, jobs=list(tracker.jobs.values()), runs=[], stopped=stop)
    if not stop:
        for name, plan in plans.items():
            if len(plan.finished_folds()) == k and plan.finished_metrics() is None:
                _assemble(Job(name, 0, pipeline_file(runs_dir, name), data_dir, runs_dir, workspace, flags), emit)
    for run in sweep.runs:
        plan = plans.get(run.name)
        metrics = plan.finished_metrics() if plan is not None else None
        done = len(plan.finished_folds()) if plan is not None else 0
        result.runs.append(RunOutcome(run.name, metrics.oof_mse if metrics else None, done, k))
    if sweep.blend is not None and not stop:
        _blend(sweep, result, runs_dir, data_dir, submissions_dir, emit)
        if result.blend is not None:
            track_ensemble(logged, result.blend.json, result.blend.png)
    return result


def _blend(
    sweep: Sweep, result: SweepResult, runs_dir: Path, data_dir: Path, submissions_dir, emit: Callable[[str], None]
) -> None:
    spec = sweep.blend
    finished = [run.name for run in result.runs if run.oof_mse is not None]
    if not finished:
        result.blend_error = "no run finished"
        emit(f"blend {spec.name}: not written: no run finished")
        return
    left_out = [run.name for run in result.runs if run.oof_mse is None]
    try:
        result.blend = blend_runs(
            [runs_dir / name for name in finished],
            data_dir,
            method=spec.method,
            name=spec.name,
            out_dir=submissions_dir,
            force=True,
        )
    except KitError as exc:
        result.blend_error = str(exc)
        emit(f"blend {spec.name}: failed: {exc}")
        return
    without = f" (without unfinished {', '.join(left_out)})" if left_out else ""
    emit(
        f"blend {spec.name} ({spec.method.value}) of {', '.join(finished)}{without}: nested-CV MSE "
        f"{result.blend.blend_mse:.4f}, wrote {result.blend.csv}"
    )
