"""The table ``kit blend`` and ``kit stack`` print: the input runs with their OOF MSE, NME and weights, then scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kit.cli._common import console
from kit.ensemble.inputs import RunScore
from kit.metrics import FAILURE_NME, Scores, normalisation


def _nme_cells(nme: float, failure_rate: float) -> tuple[str, str]:
    return f"{nme:.2f}%", f"{failure_rate:.1f}%"


def print_ensemble(
    title: str,
    weight_column: str,
    runs: Sequence[RunScore],
    scores: Sequence[tuple[str, Scores, str]],
    notes: Sequence[str],
    written: Sequence[Path],
    nme_points: tuple[int, int] | None = None,
) -> None:
    """Print the runs (the best one starred), a section of ``(label, scores, style)`` rows, notes, the files written.

    Args:
        title: the table's title.
        weight_column: the heading of the weights column.
        runs: the input runs.
        scores: rows below the runs, e.g. ``("blend, nested CV", Scores(8.9, 3.1, 0.0), "bold")``.
        notes: lines printed after the table, verbatim.
        written: the files written (the first in full, the others by name).
        nme_points: the face size's two points the NMEs were measured with (None: the face box).
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("run")
    table.add_column("OOF MSE", justify="right")
    table.add_column("NME", justify="right")
    table.add_column(f">{FAILURE_NME:g}%", justify="right")
    table.add_column(weight_column, justify="right")
    best = min(runs, key=lambda run: run.oof_mse)
    for run in runs:
        marker = " *" if run is best else ""
        nme = _nme_cells(run.oof_nme, run.oof_failure_rate)
        table.add_row(f"{run.name}{marker}", f"{run.oof_mse:.4f}", *nme, f"{run.weight:.3f}")
    table.add_section()
    for label, value, style in scores:
        table.add_row(label, f"{value.mse:.4f}", *_nme_cells(value.nme, value.failure_rate), "", style=style)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    console.print(
        f"NME: mean point error / face size ({normalisation(nme_points)}); >{FAILURE_NME:g}%: faces above "
        f"{FAILURE_NME:g}%",
        highlight=False,
    )
    first, *others = written
    console.print(f"wrote {', '.join([str(first), *(path.name for path in others)])}", highlight=False)
