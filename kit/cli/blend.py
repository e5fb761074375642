"""``kit blend``: OOF-weighted ensembling of finished runs, scored by nested CV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.blend.weights import Method
from kit.cli._common import console, handle_errors


@handle_errors
def blend(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders (kit fold-train or kit predict).")],
    data: Annotated[Path, typer.Option(help="Competition folder (train/landmarks.csv, test/, folds.csv).")],
    method: Annotated[Method, typer.Option(help="How the runs are weighted.")] = Method.weights,
    name: Annotated[str | None, typer.Option(help="Output name (default: blend-METHOD).")] = None,
    out_dir: Annotated[
        Path, typer.Option(help="Where NAME.csv, NAME.json and NAME.png go (not inside the data or a run).")
    ] = Path("submissions"),
    force: Annotated[bool, typer.Option(help="Replace an existing NAME.csv, NAME.json and NAME.png.")] = False,
) -> None:
    """Fit blend weights on the runs' OOF predictions, score them by nested CV, write the submission."""
    from rich.table import Table

    from kit.blend.blend import blend_runs

    result = blend_runs(run_dirs, data, method=method, name=name, out_dir=out_dir, force=force)
    per_point = " (mean over points)" if result.method is Method.per_point else ""
    table = Table(title=f"blend '{result.name}' ({result.method.value})", title_justify="left")
    table.add_column("run")
    table.add_column("OOF MSE", justify="right")
    table.add_column(f"weight{per_point}", justify="right")
    best = result.best_run
    for run in result.runs:
        marker = " *" if run is best else ""
        table.add_row(f"{run.name}{marker}", f"{run.oof_mse:.4f}", f"{run.weight:.3f}")
    table.add_section()
    table.add_row("blend, nested CV", f"{result.blend_mse:.4f}", "", style="bold")
    table.add_row("blend, in-sample (optimistic)", f"{result.in_sample_mse:.4f}", "", style="dim")
    console.print(table)
    gain = best.oof_mse - result.blend_mse
    verdict = "better" if gain > 0 else "worse"
    console.print(
        f"blend is {abs(gain):.4f} ({abs(gain) / best.oof_mse:.1%}) {verdict} than the best run ({best.name}) "
        f"in nested CV; folds: {', '.join(f'{v:.4f}' for v in result.fold_mse)}",
        highlight=False,
    )
    console.print(f"wrote {result.csv}, {result.json.name}, {result.png.name}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(blend)
