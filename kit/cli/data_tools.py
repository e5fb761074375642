"""``kit folds`` and ``kit score``: the shared split and the competition metric."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import NmePointsOption, WorkspaceOption, echo, echo_workspace, handle_errors, parse_nme_points


@handle_errors
def folds(
    data_dir: Annotated[Path, typer.Argument(help="Competition folder.")],
    k: Annotated[int, typer.Option("--k", min=2, help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffle seed; the same seed gives the same split.")] = 42,
    groups: Annotated[
        Path | None, typer.Option(help="CSV 'file_name,group' (default: train/groups.csv when present).")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Write folds.csv (file_name, fold) to the workspace (default: beside the data): the one split every model uses."""
    from kit.data.competition import FOLDS_FILE, Competition
    from kit.data.folds import make_folds, read_groups, write_folds

    comp = Competition.load(data_dir, workspace=workspace)
    echo_workspace(comp)
    if groups is None and (comp.root / "train" / "groups.csv").is_file():
        groups = comp.root / "train" / "groups.csv"
    labels = read_groups(groups, comp.train.file_names) if groups is not None else None
    table = make_folds(comp.train.file_names, k=k, seed=seed, groups=labels)
    target = comp.workspace / FOLDS_FILE
    digest = write_folds(target, table)
    counts = ", ".join(str(n) for n in table["fold"].value_counts().sort_index())
    grouped = " (grouped)" if labels is not None else ""
    echo(f"wrote {target}: {k} folds{grouped} of {counts} images, sha256 {digest[:12]}")


@handle_errors
def score(
    submission: Annotated[Path, typer.Argument(help="Submission CSV.")],
    data: Annotated[Path, typer.Option(help="Competition folder with private/test_landmarks.csv.")],
    nme_points: NmePointsOption = None,
) -> None:
    """Score a submission against the private test answers: prints ``MSE <value>``, then the NME of the submitted
    points (normalised by each face's size from all its true points) and the share of faces above 10%."""
    from kit.data.competition import Competition
    from kit.metrics import face_sizes, format_nme, mse, nme_per_face, nme_summary
    from kit.submit.format import select_requested, validate_submission

    pair = parse_nme_points(nme_points)
    comp = Competition.load(data)
    predicted = validate_submission(submission, comp.test)
    answers = comp.private_answers()
    truth = select_requested(answers.points, comp.test)
    sizes = face_sizes(
        answers.points, comp.resolve_nme_points(pair), source=str(comp.private_csv), names=answers.file_names
    )
    nme = nme_summary(nme_per_face(predicted, truth, sizes=sizes))
    echo(f"MSE {mse(predicted, truth):.6g}  {format_nme(*nme)}")  # `awk '{print $2}'` is the MSE


def register(app: typer.Typer) -> None:
    app.command()(folds)
    app.command()(score)
