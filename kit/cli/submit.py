"""``kit validate``, ``kit submit``, ``kit submissions``, ``kit download``: submissions and the Kaggle API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import console, err_console, handle_errors
from kit.submit.kaggle import EXIT_CODES, RETRIES_ENV, TIMEOUT_ENV, Network  # cheap: kit.cli already loads kit.submit

Competition = Annotated[str, typer.Option("--competition", help="Kaggle competition slug.")]
Timeout = Annotated[
    float | None,
    typer.Option(help=f"Seconds a Kaggle request may stall before it fails (env {TIMEOUT_ENV}, default 30)."),
]
Retries = Annotated[
    int | None,
    typer.Option(
        min=0,
        help=f"Retries of listing, polling and download on HTTP 5xx, timeouts and dropped connections "
        f"(never the upload itself; env {RETRIES_ENV}, default 3).",
    ),
]
EXIT_HELP = "Exit codes: " + "; ".join(f"{code}: {text}" for code, text in EXIT_CODES.items()) + "."


def _network(timeout: float | None, retries: int | None) -> Network:
    def notify(line: str) -> None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    return Network.from_env(timeout_s=timeout, retries=retries, notify=notify)


@handle_errors
def validate(
    file: Annotated[Path, typer.Argument(help="Submission CSV.")],
    data: Annotated[Path, typer.Option(help="Competition folder with test/test_points.csv.")],
) -> None:
    """Check a submission's header, rows, order and values against test_points.csv."""
    from kit.submit.format import read_competition_test_points, validate_submission

    values = validate_submission(file, read_competition_test_points(data))
    console.print(f"ok: {file}: {values.shape[0]} rows x {values.shape[1]} points", highlight=False)


@handle_errors
def submit(
    file: Annotated[Path, typer.Argument(help="Submission CSV.")],
    competition: Competition,
    message: Annotated[str, typer.Option(help="Submission description shown on Kaggle.")],
    data: Annotated[Path, typer.Option(help="Competition folder: the file is validated against it first.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only; contact nothing.")] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the score, retries included (0: don't wait).")
    ] = 120.0,
    poll: Annotated[float, typer.Option(min=1, help="Seconds between status checks.")] = 5.0,
    timeout: Timeout = None,
    retries: Retries = None,
) -> None:
    """Validate a submission, upload it with the official kaggle client, and print its status and score.

    The upload is never retried automatically: when it fails, the message says whether the submission may exist.
    """
    from kit.submit.format import read_competition_test_points
    from kit.submit.kaggle import submit_file

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    test = read_competition_test_points(data)
    net = _network(timeout, retries)
    submit_file(file, competition, message, test, dry_run=dry_run, wait_s=wait, poll_s=poll, log=log, net=net)


@handle_errors
def submissions(
    competition: Competition,
    limit: Annotated[int, typer.Option(min=1, help="How many recent submissions.")] = 20,
    timeout: Timeout = None,
    retries: Retries = None,
) -> None:
    """List recent submissions with their status and scores."""
    from rich.table import Table

    from kit.submit.kaggle import list_submissions

    items = list_submissions(competition, limit=limit, net=_network(timeout, retries))
    if not items:
        console.print(f"no submissions to '{competition}'", highlight=False)
        return
    table = Table(title=f"submissions to '{competition}'", title_justify="left")
    for column in ("ref", "date", "file", "description", "status", "public", "private"):
        table.add_column(column, justify="right" if column in ("ref", "public", "private") else "left")
    for s in items:
        status = f"{s.status}: {s.error}" if s.error else s.status
        scores = (s.public_score or "", s.private_score or "")
        table.add_row(str(s.ref), s.date, s.file_name, s.description, status, *scores)
    console.print(table)


@handle_errors
def download(
    competition: Competition,
    out_dir: Annotated[Path, typer.Argument(help="Folder to unpack the competition data into.")],
    timeout: Timeout = None,
    retries: Retries = None,
) -> None:
    """Download the competition data through the kaggle client and unpack it."""
    from kit.submit.kaggle import download_competition

    entries = download_competition(competition, out_dir, net=_network(timeout, retries))
    console.print(f"unpacked '{competition}' into {out_dir}: {', '.join(p.name for p in entries)}", highlight=False)


def register(app: typer.Typer) -> None:
    for command in (validate, submit, submissions, download):
        app.command(epilog=EXIT_HELP if command is submit else None)(command)
