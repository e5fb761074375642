"""Shared CLI plumbing: one-line errors with a non-zero exit, and progress bars."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kit.errors import Interrupted, KitError

console = Console()
err_console = Console(stderr=True)


def handle_errors(func: Callable) -> Callable:
    """Turn a KitError into ``error: <message>`` on stderr and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Interrupted as exc:
            err_console.print(f"[yellow]interrupted:[/yellow] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KitError as exc:
            # The message is data (it may hold "[...]"): escape it so rich prints it verbatim, on one line.
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def echo(text: str) -> None:
    """Print one line to stdout verbatim: no markup, no highlighting, no wrapping at the terminal width."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields ``advance(n)``."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f}/s")

        yield advance
