"""Shared CLI plumbing: one-line errors with a non-zero exit, and progress bars."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kit.codecs.decoders import decoder_names
from kit.errors import Interrupted, KitError

if TYPE_CHECKING:
    from kit.data.competition import Competition

console = Console()
err_console = Console(stderr=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        file_okay=False,
        help="Folder for derived files (caches, folds.csv, flip permutation). Default: $KIT_WORKSPACE, else the "
        "data folder when writable, else a folder under the kit cache.",
    ),
]

NmePointsOption = Annotated[
    str | None,
    typer.Option(
        "--nme-points",
        metavar="A,B",
        help="Two point numbers whose distance is the face size for NME (e.g. 36,45: the outer eye corners of "
        "68-point faces). Default: the data's nme_points.txt, else the face box (sqrt of width x height).",
    ),
]

# Every decoder of the vocabulary (kit.codecs.decoders); the run's model family accepts its own (kit predict).
DecoderChoice = Enum("DecoderChoice", {name: name for name in decoder_names()}, type=str)

TrackOption = Annotated[
    str | None,
    typer.Option(
        "--track",
        metavar="none|mlflow",
        help="Log to MLflow too: the default store is RUNS/mlflow.db (SQLite, no server); --tracking-uri or "
        "$KIT_TRACKING_URI for another (http://HOST:PORT). Default: the pipeline's tracking section, else "
        "$KIT_TRACKING_URI, else off. Needs the track extra (pip install -e '.[track]').",
    ),
]
TrackingUriOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (sqlite:///FILE or http://HOST:PORT).")
]


def open_tracking(track: str | None, uri: str | None, config, runs_dir: Path):
    """The tracker of ``--track``/``--tracking-uri`` (``kit.tracking.tracker_for``); says where it logs."""
    from kit.tracking import Track, tracker_for

    if track is not None and track not in {t.value for t in Track}:
        raise KitError(f"--track {track!r}: choose none or mlflow")

    def warn(line: str) -> None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    tracker = tracker_for(track, uri, config, runs_dir, warn)
    if tracker.on:
        echo(f"tracking: {tracker.uri}")
    return tracker


def parse_nme_points(text: str | None) -> tuple[int, int] | None:
    """``--nme-points A,B`` as a pair of distinct non-negative point numbers (None when not given).

    Raises:
        KitError: ``--nme-points 'TEXT': ...`` on anything else.
    """
    if text is None:
        return None
    fields = [field.strip() for field in text.split(",")]
    try:
        pair = tuple(int(field) for field in fields)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 0:
        raise KitError(f"--nme-points {text!r}: expected two point numbers A,B such as 36,45")
    if pair[0] == pair[1]:
        raise KitError(f"--nme-points {text!r}: the two points must differ")
    return pair


def handle_errors(func: Callable) -> Callable:
    """Turn a KitError into ``error: <message>`` on stderr and its ``exit_code`` (default 1), no traceback.

    An ``Interrupted`` (a signal, after saving what resumes the work) prints ``interrupted: <message>``.
    """

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
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None

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


def echo_workspace(data: Competition | Path, workspace: Path | None = None) -> None:
    """Print ``workspace: PATH (REASON)`` when derived files do not go beside the data.

    Args:
        data: the competition folder, or a loaded ``Competition`` (whose workspace is used).
        workspace: the ``--workspace`` option, for a folder.
    """
    from kit.data.competition import Competition, resolve_workspace

    if not isinstance(data, Competition):
        if not Path(data).is_dir():
            return  # the command reports the missing folder
        data = Competition(Path(data), *resolve_workspace(data, workspace))
    if data.workspace_note is not None:
        echo(data.workspace_note)
