"""``kit sweep``: many runs, each fold a job, on this machine or a Ray cluster, then their blend."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import TrackingUriOption, TrackOption, WorkspaceOption, console, echo, err_console, handle_errors
from kit.errors import Interrupted, KitError


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


def _executor(name: ExecutorName, address, jobs, cpus_per_job, gpus_per_job, retries, connect_timeout=10.0):
    if name is ExecutorName.local:
        from kit.sweep.local import LocalExecutor

        return LocalExecutor(jobs=jobs)
    from kit.sweep.ray_executor import RayExecutor

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise KitError("--executor ray: give the cluster with --address HOST:PORT (or set RAY_ADDRESS)")
    return RayExecutor(
        address,
        cpus_per_job=cpus_per_job,
        gpus_per_job=gpus_per_job,
        retries=retries,
        jobs=jobs,
        connect_timeout=connect_timeout,
    )


def _table(result) -> None:
    from rich.table import Table

    table = Table(title="sweep", title_justify="left")
    for column, justify in (("job", "left"), ("state", "left"), ("where", "left"), ("attempts", "right")):
        table.add_column(column, justify=justify)
    table.add_column("seconds", justify="right")
    table.add_column("fold MSE", justify="right")
    table.add_column("error", overflow="fold")
    styles = {"done": "green", "skipped": "dim", "failed": "red", "interrupted": "yellow"}
    for job in result.jobs:
        table.add_row(
            job.label,
            job.state,
            job.where,
            str(job.attempts) if job.attempts else "",
            f"{job.seconds:.0f}" if job.seconds is not None else "",
            f"{job.fold_mse:.4f}" if job.fold_mse is not None else "",
            job.error or job.note or "",
            style=styles.get(job.state),
        )
    table.add_section()
    for run in result.runs:
        mse = f"OOF {run.oof_mse:.4f}" if run.oof_mse is not None else ""
        table.add_row(run.name, "finished" if run.oof_mse is not None else "partial", "", "", "", mse, "")
    if result.blend is not None:
        table.add_row(f"blend {result.blend.name}", "written", "", "", "", f"{result.blend.blend_mse:.4f}", "")
    console.print(table)


@handle_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML (see sweeps/).")],
    data: Annotated[Path, typer.Option(help="Competition folder (the same path on every node).")],
    out: Annotated[Path, typer.Option(help="Runs folder: OUT/<run name>, the sweep's own files in OUT/.sweep.")] = Path(
        "runs"
    ),
    executor: Annotated[ExecutorName, typer.Option(help="Where the jobs run.")] = ExecutorName.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT for --executor ray (default: $RAY_ADDRESS).")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1, help="Concurrent jobs. local: default one per GPU, else 1 (CPU cores are split); ray: default all."
        ),
    ] = None,
    cpus_per_job: Annotated[int, typer.Option(min=1, help="ray: CPUs each job reserves (its threads).")] = 1,
    gpus_per_job: Annotated[
        float | None, typer.Option(min=0, help="ray: GPUs each job reserves (default: 1 if the cluster has GPUs).")
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="ray: retries of a job whose node died.")] = 3,
    connect_timeout: Annotated[
        float, typer.Option(min=0.1, help="ray: seconds to wait for the cluster to answer before anything is built.")
    ] = 10.0,
    allow_mixed: Annotated[
        bool, typer.Option(help="Accept finished folds trained with other CPU threads or device (recorded).")
    ] = False,
    skip_corrupt: Annotated[
        bool, typer.Option(help="Train without images whose JPEG data is corrupt (listed) instead of failing.")
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key of every pipeline: section.key=value.")
    ] = None,
    submissions: Annotated[Path, typer.Option(help="Where the sweep's blend goes (NAME.csv, .json, .png).")] = Path(
        "submissions"
    ),
    workspace: WorkspaceOption = None,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Train every fold of every run of a sweep file (finished folds are skipped), then blend the finished runs."""
    from kit.sweep.run import run_sweep
    from kit.sweep.stop import StopSignal, stop_on_signals

    chosen = _executor(executor, address, jobs, cpus_per_job, gpus_per_job, retries, connect_timeout)
    stop = StopSignal()
    with stop_on_signals(stop):
        result = run_sweep(
            sweep_file,
            data,
            out,
            chosen,
            set_ or [],
            submissions,
            workspace,
            emit=echo,
            stop=stop,
            allow_mixed=allow_mixed,
            skip_corrupt=skip_corrupt,
            track=track,
            tracking_uri=tracking_uri,
            warn=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    _table(result)
    if stop:
        stopped = [job.label for job in result.jobs if job.state in ("interrupted", "not started")]
        raise Interrupted(
            f"stopped with {len(stopped)} job(s) unfinished; run the same command to continue", stop.signum or 2
        )
    if result.failed:
        names = ", ".join(job.label for job in result.failed)
        raise KitError(f"{len(result.failed)} job(s) failed: {names} (logs: {out / '.sweep' / 'logs'})")
    if result.blend_error is not None:
        raise KitError(f"blend {result.sweep.blend.name}: {result.blend_error}")


def register(app: typer.Typer) -> None:
    app.command()(sweep)
