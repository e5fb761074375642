"""``kit stack``: a second-level model over finished runs' OOF predictions, scored by nested CV."""

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
from kit.ensemble.stack import Model


def verdict(stack_mse: float, blend_mse: float, method: str = "weights") -> str:
    """Whether the stack beats the best blend in nested CV, in words."""
    gain = blend_mse - stack_mse
    if gain > 0:
        return f"stack beats the best blend ({method}) by {gain:.4f} ({gain / blend_mse:.1%}) in nested CV"
    return f"stack does not beat the best blend ({method}): {-gain:.4f} ({-gain / blend_mse:.1%}) worse in nested CV"


@handle_errors
def stack(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders (kit fold-train or kit predict).")],
    data: Annotated[Path, typer.Option(help="Competition folder (train/landmarks.csv, test/, folds.csv).")],
    name: Annotated[str | None, typer.Option(help="Output name (default: stack-MODEL).")] = None,
    model: Annotated[Model, typer.Option(help="The second-level model.")] = Model.ridge,
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
    """Fit a stacker on the runs' OOF predictions, score it by nested CV against the best blend, write a submission."""
    from kit.cli._ensemble import print_ensemble
    from kit.ensemble.rows import report_passes
    from kit.ensemble.stack import stack_runs
    from kit.tracking import track_ensemble

    pair = parse_nme_points(nme_points)
    tracker = open_tracking(track, tracking_uri, None, run_dirs[0].parent)
    with report_passes(progress_bar):  # each pass over the rows: a bar with rate and time left
        result = stack_runs(run_dirs, data, model=model, name=name, out_dir=out_dir, force=force, nme_points=pair)
    track_ensemble(tracker, result.json, result.png)
    weight = "weight (mean over points)" if result.model is Model.ridge else "stage-1 weight (mean over points)"
    print_ensemble(
        f"stack '{result.name}' ({result.model.value})",
        weight,
        result.runs,
        [
            ("stack, nested CV", result.stack_scores, "bold"),
            ("stack, in-sample (optimistic)", result.in_sample_scores, "dim"),
            (f"best blend ({result.blend_method}), nested CV", result.blend_scores, ""),
        ],
        [
            f"{verdict(result.stack_mse, result.blend_mse, result.blend_method)}; "
            f"folds: {', '.join(f'{v:.4f}' for v in result.fold_mse)}",
        ],
        [result.csv, result.json, result.npz, result.png],
        result.nme_points,
    )


def register(app: typer.Typer) -> None:
    app.command()(stack)
