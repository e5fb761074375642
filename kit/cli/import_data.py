"""``kit import``: a standard landmark dataset (iBUG .pts, WFLW, CSV) as a competition folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import NmePointsOption, echo, handle_errors, parse_nme_points, progress_bar
from kit.errors import KitError


class Format(str, Enum):
    pts = "pts"
    wflw = "wflw"
    csv = "csv"


@handle_errors
def import_data(
    fmt: Annotated[Format, typer.Argument(metavar="FORMAT", help="pts (iBUG/300-W), wflw (annotation lines) or csv.")],
    sources: Annotated[
        list[Path],
        typer.Argument(help="pts: folders (searched recursively) or .pts files; wflw/csv: annotation files."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The competition folder to write (new or empty).")],
    test: Annotated[
        list[Path] | None, typer.Option("--test", help="Sources of the test set (same format); repeat for several.")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option("--test-fraction", min=0.0, max=1.0, help="Hold out this share of the photos.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="wflw: the folder image paths are relative to (default: the file's folder).")
    ] = None,
    margin: Annotated[float, typer.Option(help="Crop box = the points' box scaled by this.")] = 1.5,
    jitter: Annotated[float, typer.Option(help="Random shift and log-scale of the crop box (seeded).")] = 0.0,
    size: Annotated[int, typer.Option(help="Short side of each crop, pixels.")] = 256,
    round_labels: Annotated[
        bool, typer.Option("--round/--no-round", help="Integer labels, as in the competition.")
    ] = True,
    requested: Annotated[
        int | None, typer.Option(help="Random point indices requested per test image (default 30, at most all).")
    ] = None,
    nme_points: NmePointsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the jitter, the test split and the requested points.")] = 0,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier import in --out once the new one is complete.")
    ] = False,
) -> None:
    """Import a landmark dataset into the competition layout: face crops, labels, groups, a test set."""
    from kit.data.importers import CropSpec, import_competition, read_faces

    if (test is None) == (test_fraction is None):
        raise KitError("give the test set: --test SRC or --test-fraction F (one of them)")
    pair = parse_nme_points(nme_points)
    try:
        spec = CropSpec(margin=margin, jitter=jitter, size=size, round_labels=round_labels, seed=seed)
    except ValueError as exc:
        raise KitError(str(exc)) from None
    faces = read_faces(fmt.value, sources, images)
    test_faces = read_faces(fmt.value, test, images) if test else None
    total = len(faces) + (len(test_faces) if test_faces else 0)
    with progress_bar(total, "cropping") as advance:
        try:
            summary = import_competition(
                faces,
                out,
                spec,
                test_faces=test_faces,
                test_fraction=test_fraction,
                n_requested=requested,
                nme_points=pair,
                force=force,
                progress=advance,
                sources=[str(s) for s in list(sources) + list(test or [])],
            )
        except ValueError as exc:
            raise KitError(str(exc)) from None
    norm = f"NME by points {summary.nme_points[0]},{summary.nme_points[1]}" if summary.nme_points else "NME by face box"
    echo(
        f"wrote {out}: {summary.n_train} train faces from {summary.n_groups} photos + {summary.n_test} test faces, "
        f"{summary.n_points} points, {norm}"
    )


def register(app: typer.Typer) -> None:
    app.command(name="import")(import_data)
