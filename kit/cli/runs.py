"""``kit runs``: a leaderboard of every run in a runs folder, and the pipeline keys that differ between two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import NmePointsOption, TrackingUriOption, console, echo, handle_errors, parse_nme_points
from kit.errors import KitError


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def _nme_cells(row, mixed: bool) -> tuple[str, str]:
    """The OOF NME and failure-rate cells; the NME names its normalisation when the rows' differ."""
    from kit.metrics import normalisation

    if row.oof_nme is None or row.oof_failure_rate is None:
        return "", ""
    by = f" ({normalisation(row.nme_points)})" if mixed else ""
    return f"{row.oof_nme:.2f}%{by}", f"{row.oof_failure_rate:.1f}%"


def _table(rows) -> None:
    from rich.table import Table

    from kit.metrics import FAILURE_NME

    table = Table(title_justify="left")
    columns = ["run", "family", "backbone", "input", "epochs", "folds", "OOF MSE", "OOF NME", f">{FAILURE_NME:g}%"]
    columns += ["fold MSE", "wall", "img/s"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "family", "backbone") else "right")
    for column in ("split", "pipeline", "state", "blends"):
        table.add_column(column, overflow="fold")
    styles = {"finished": None, "partial": "yellow", "running": "cyan", "failed": "red"}
    mixed = len({row.nme_points for row in rows if row.oof_nme is not None}) > 1
    for row in rows:
        total = str(row.folds_total) if row.folds_total is not None else "?"
        spread = f"{row.fold_mse:.4f} ± {row.fold_mse_std:.4f}" if row.fold_mse is not None else ""
        state = (
            row.state
            + (f": {row.error}" if row.error else "")
            + (f" ({'; '.join(row.running)})" if row.running else "")
        )
        table.add_row(
            row.name,
            row.family or "",
            row.backbone or "",
            str(row.input_size or ""),
            str(row.epochs or ""),
            f"{row.folds_done}/{total}",
            f"{row.oof_mse:.4f}" if row.oof_mse is not None else "",
            *_nme_cells(row, mixed),
            spread,
            _seconds(row.wall_seconds),
            f"{row.images_per_second:,.0f}" if row.images_per_second is not None else "",
            row.split_sha or "",
            row.pipeline_sha or "",
            state,
            ", ".join(row.blends),
            style=styles.get(row.state),
        )
    console.print(table)


def _print_diff(diff) -> None:
    echo(f"a: {diff.a}")
    echo(f"b: {diff.b}")
    for key, a, b in diff.keys:
        echo(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
    if not diff.keys:
        echo("same pipeline (but the name)")
    echo("split: same" if diff.same_split else "split: different (the runs can't be blended together)")


def _export(backend: str, runs_dir: Path, uri: str | None) -> None:
    from kit.cli._common import open_tracking
    from kit.runs import RunDir
    from kit.tracking import export_runs

    if backend != "mlflow":
        raise KitError(f"--export {backend!r}: the one tracker is mlflow")
    if not runs_dir.is_dir():
        raise KitError(f"{runs_dir}: not a folder")
    tracker = open_tracking("mlflow", uri, None, runs_dir)
    runs = [RunDir(path) for path in sorted(runs_dir.iterdir()) if path.is_dir() and RunDir(path).is_run()]
    outcomes = export_runs(tracker, runs)
    for name, outcome in outcomes.items():
        echo(f"{name}: {outcome}")
    if not outcomes:
        echo(f"{runs_dir}: no runs")
    if not tracker.on:
        raise KitError(f"--export mlflow: tracking to {tracker.uri} failed; nothing more was exported")


@handle_errors
def runs(
    runs_dir: Annotated[Path, typer.Argument(help="Runs folder (kit fold-train --out, kit sweep --out).")] = Path(
        "runs"
    ),
    sort: Annotated[
        str,
        typer.Option(
            help="Column to sort by: oof_mse, oof_nme, oof_failure_rate, fold_mse, name, wall_seconds, "
            "images_per_second, ..."
        ),
    ] = "oof_mse",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    submissions: Annotated[Path, typer.Option(help="Folder of blend records (NAME.json) to list users from.")] = Path(
        "submissions"
    ),
    data: Annotated[
        Path | None, typer.Option(help="Competition folder: gives unfinished runs their number of folds.")
    ] = None,
    diff: Annotated[
        tuple[str, str] | None, typer.Option(help="Two runs (names under RUNS_DIR or folders): the keys that differ.")
    ] = None,
    nme_points: NmePointsOption = None,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            metavar="mlflow",
            help="Log every finished run (folds, epochs, scores, report) to MLflow, skipping those it has complete.",
        ),
    ] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """One row per run: model, folds finished, OOF MSE, NME and spread, speed, hashes, state and the blends using it.

    With --data, a run whose OOF NME was recorded with another normalisation than the data's (or --nme-points)
    gets it recomputed from its oof.npy.
    """
    from kit.runs_table import NmeReference, diff_runs, list_runs

    pair = parse_nme_points(nme_points)
    if pair is not None and data is None:
        raise KitError("--nme-points needs --data: the runs' OOF NME is recomputed against its landmarks")

    if export is not None:
        _export(export, runs_dir, tracking_uri)
        return
    if diff is not None:
        result = diff_runs(runs_dir, *diff)
        if as_json:
            echo(json.dumps(result.to_dict(), indent=2))
        else:
            _print_diff(result)
        return
    folds = reference = None
    if data is not None:
        from kit.data.competition import Competition
        from kit.data.derived import fold_count

        comp = Competition.load(data)
        folds, reference = fold_count(comp), NmeReference.of(comp, pair)
    rows = list_runs(runs_dir, submissions, sort=sort, folds=folds, reference=reference)
    if as_json:
        echo(json.dumps([row.to_dict() for row in rows], indent=2))
    elif not rows:
        echo(f"{runs_dir}: no runs")
    else:
        _table(rows)


def register(app: typer.Typer) -> None:
    app.command()(runs)
