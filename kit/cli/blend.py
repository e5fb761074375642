"""``kit blend``: OOF-weighted ensembling of finished runs, scored by nested CV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import (
    NmePointsOption,
    TrackingUriOption,
    TrackOption,
    handle_errors,
    open_tracking,
    parse_nme_points,
    progress_bar,
)
from kit.ensemble.weights import Method


@handle_errors
def blend(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders (kit fold-train or kit predict).")],
    data: Annotated[Path, typer.Option(help="Competition folder (train/landmarks.csv, test/, folds.csv).")],
    method: Annotated[Method, typer.Option(help="How the runs are weighted.")] = Method.weights,
    name: Annotated[str | None, typer.Option(help="Output name (default: blend-METHOD).")] = None,
    out_dir: Annotated[
        Path,
        typer.Option(help="Where NAME.csv, NAME.json (with NAME.npz) and NAME.png go (not inside the data or a run)."),
    ] = Path("submissions"),
    force: Annotated[
        bool, typer.Option(help="Replace an existing NAME.csv, NAME.json, NAME.npz and NAME.png.")
    ] = False,
    nme_points: NmePointsOption = None,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Fit blend weights on the runs' OOF predictions, score them (MSE, NME) by nested CV, write the submission."""
    from kit.cli._ensemble import print_ensemble
    from kit.ensemble.blend import blend_runs
    from kit.ensemble.rows import report_passes
    from kit.tracking import track_ensemble

    pair = parse_nme_points(nme_points)
    tracker = open_tracking(track, tracking_uri, None, run_dirs[0].parent)
    with report_passes(progress_bar):  # each pass over the rows: a bar with rate and time left
        result = blend_runs(run_dirs, data, method=method, name=name, out_dir=out_dir, force=force, nme_points=pair)
    track_ensemble(tracker, result.json, result.png)
    per_point = " (mean over points)" if result.method is Method.per_point else ""
    best = result.best_run
    gain = best.oof_mse - result.blend_mse
    verdict = "better" if gain > 0 else "worse"
    print_ensemble(
        f"blend '{result.name}' ({result.method.value})",
        f"weight{per_point}",
        result.runs,
        [
            ("blend, nested CV", result.blend_scores, "bold"),
            ("blend, in-sample (optimistic)", result.in_sample_scores, "dim"),
        ],
        [
            f"blend is {abs(gain):.4f} ({abs(gain) / best.oof_mse:.1%}) {verdict} than the best run ({best.name}) "
            f"in nested CV; folds: {', '.join(f'{v:.4f}' for v in result.fold_mse)}"
        ],
        [result.csv, result.json, result.npz, result.png],
        result.nme_points,
    )


def register(app: typer.Typer) -> None:
    app.command()(blend)
