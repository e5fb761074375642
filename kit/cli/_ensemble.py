"""The table ``kit blend`` and ``kit stack`` print: the input runs with their OOF MSE and weights, then scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kit.blend.inputs import RunScore
from kit.cli._common import console


def print_ensemble(
    title: str,
    weight_column: str,
    runs: Sequence[RunScore],
    scores: Sequence[tuple[str, float, str]],
    notes: Sequence[str],
    written: Sequence[Path],
) -> None:
    """Print the runs (the best one starred), a section of ``(label, MSE, style)`` rows, notes, the files written.

    Args:
        title: the table's title.
        weight_column: the heading of the weights column.
        runs: the input runs.
        scores: rows below the runs, e.g. ``("blend, nested CV", 8.9, "bold")``.
        notes: lines printed after the table, verbatim.
        written: the files written (the first in full, the others by name).
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("run")
    table.add_column("OOF MSE", justify="right")
    table.add_column(weight_column, justify="right")
    best = min(runs, key=lambda run: run.oof_mse)
    for run in runs:
        marker = " *" if run is best else ""
        table.add_row(f"{run.name}{marker}", f"{run.oof_mse:.4f}", f"{run.weight:.3f}")
    table.add_section()
    for label, value, style in scores:
        table.add_row(label, f"{value:.4f}", "", style=style)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    first, *others = written
    console.print(f"wrote {', '.join([str(first), *(path.name for path in others)])}", highlight=False)
