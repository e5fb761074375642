"""``kit check``: validate a competition folder and print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import WorkspaceOption, console, echo, echo_workspace, handle_errors, progress_bar


@handle_errors
def check(
    data_dir: Annotated[Path, typer.Argument(help="Competition folder (train/, test/).")],
    decode: Annotated[
        bool,
        typer.Option(
            help="Decode every image: catches corrupt image data, at a decode per image (slow at full size; kit "
            "prepare decodes strictly anyway). Default: read every image's header only."
        ),
    ] = False,
    workspace: WorkspaceOption = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=1, help="Largest image accepted (width x height). Default: $KIT_MAX_IMAGE_PIXELS, else 50000000."
        ),
    ] = None,
) -> None:
    """Validate tables and image headers (--decode: every image); derive and store the left/right flip permutation."""
    from kit.data.check import check_competition
    from kit.data.competition import Competition

    comp = Competition.load(data_dir, workspace=workspace)
    echo_workspace(comp)
    total = len(comp.train) + len(comp.test)
    with progress_bar(total, "decoding images" if decode else "image headers") as advance:
        summary = check_competition(comp, decode=decode, progress=advance, max_pixels=max_pixels)
    for line in summary.lines():
        echo(line)
    console.print("[green]ok[/green]")


def register(app: typer.Typer) -> None:
    app.command()(check)
