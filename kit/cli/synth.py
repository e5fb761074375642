"""``kit synth``: write a synthetic competition in the exact layout of the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import echo, handle_errors, progress_bar
from kit.errors import KitError


@handle_errors
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to create (must not exist or be empty; not inside a competition folder).")
    ],
    n_train: Annotated[int, typer.Option("--n-train", min=1, help="Training images.")] = 1000,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Test images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    n_points: Annotated[int, typer.Option("--n-points", min=100, help="Landmarks per face.")] = 971,
    n_requested: Annotated[int, typer.Option("--n-requested", min=1, help="Requested points per test row.")] = 30,
    force: Annotated[
        bool, typer.Option(help="Replace an existing synthetic competition in OUT_DIR, once the new one is complete.")
    ] = False,
) -> None:
    """Generate a demo competition: train/, test/ and private/ answers with the true flip permutation."""
    from kit.synth import generate_competition

    with progress_bar(n_train + n_test, "rendering") as advance:
        try:
            summary = generate_competition(
                out_dir,
                n_train=n_train,
                n_test=n_test,
                seed=seed,
                n_points=n_points,
                n_requested=n_requested,
                progress=advance,
                force=force,
            )
        except (ValueError, FileExistsError) as exc:
            raise KitError(str(exc)) from None
    echo(
        f"wrote {out_dir}: {n_train} train + {n_test} test images, {n_points} points, "
        f"{summary.images_per_second:.0f} images/s"
    )


def register(app: typer.Typer) -> None:
    app.command()(synth)
