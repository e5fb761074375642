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
    source: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            help="What the file came from: a run folder or a blend/stack NAME.json (default: the NAME.json beside "
            "the file, when its hash matches).",
        ),
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(file_okay=False, help="Folder of the ledger.jsonl (default: the file's folder).")
    ] = None,
) -> None:
    """Validate a submission, upload it with the official kaggle client, and print its status and score.

    Each upload (and dry run) is recorded in the ledger with its source and CV; the score is filled in as it is
    polled. The upload is never retried automatically: when it fails, the message says whether the submission may
    exist.
    """
    from kit.submit.format import read_competition_test_points
    from kit.submit.ledger import Ledger, submit_recorded

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    test = read_competition_test_points(data)
    net = _network(timeout, retries)
    book = Ledger(ledger if ledger is not None else file.parent)
    _, entry = submit_recorded(
        file, competition, message, test, book, source, dry_run=dry_run, wait_s=wait, poll_s=poll, log=log, net=net
    )
    if entry is not None:
        log(f"ledger: #{entry.id} in {book.path} ({_describe_source(entry)})")


def _cv(entry) -> str:
    s = entry.source
    return f"{s.cv_mse:.4f}" if s.cv_mse is not None else ""


def _describe_source(entry) -> str:
    s = entry.source
    if s.kind == "unknown":
        return f"source unknown: {s.note}" if s.note else "source unknown"
    cv = f", {s.cv_kind} MSE {s.cv_mse:.4f}" if s.cv_mse is not None else ""
    nme = f", NME {s.cv_nme:.2f}%" if s.cv_nme is not None else ""
    return f"{s.kind} {s.name}{cv}{nme}"


def _ledger_table(entries, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = ("#", "date", "file", "source", "CV MSE", "CV NME", "state", "ref", "public", "private")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("#", "CV MSE", "CV NME", "ref", "public", "private") else "left"
        )
    for e in entries:
        s = e.source
        source = f"{s.kind} {s.name}" if s.kind != "unknown" else "unknown"
        state = e.state + (f" {e.status}" if e.status else "") + (f": {e.error}" if e.error else "")
        table.add_row(
            str(e.id),
            e.created[:19],
            e.file_name,
            source + (f" ({s.cv_kind})" if s.cv_kind else ""),
            _cv(e),
            f"{s.cv_nme:.2f}%" if s.cv_nme is not None else "",
            state,
            str(e.ref) if e.ref else "",
            f"{e.public_score:g}" if e.public_score is not None else "",
            f"{e.private_score:g}" if e.private_score is not None else "",
        )
    console.print(table)


SubmissionsDir = Annotated[
    Path, typer.Option("--submissions", file_okay=False, help="Folder of the submissions and their ledger.jsonl.")
]


@handle_errors
def submissions(
    competition: Annotated[
        str | None, typer.Option("--competition", help="Kaggle competition slug (optional with --local).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent submissions.")] = 20,
    timeout: Timeout = None,
    retries: Retries = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Show the ledger (source, CV, scores) joined to Kaggle's list (when --competition is given).",
        ),
    ] = False,
    submissions_dir: SubmissionsDir = Path("submissions"),
) -> None:
    """List recent submissions with their status and scores; the ledger's scores are filled in from the listing."""
    from rich.table import Table

    from kit.errors import KitError
    from kit.submit.kaggle import KaggleError, list_submissions
    from kit.submit.ledger import Ledger, apply_listing

    book = Ledger(submissions_dir)
    if local:
        entries = book.read()
        if competition is not None:
            try:
                items = list_submissions(competition, limit=limit, net=_network(timeout, retries))
                entries = apply_listing(book, competition, items)
            except KaggleError as exc:
                err_console.print(f"warning: Kaggle's list not joined: {exc}", markup=False, highlight=False)
                entries = [e for e in entries if e.competition == competition]
        if not entries:
            console.print(f"{book.path}: no submissions recorded", highlight=False)
            return
        _ledger_table(entries, f"ledger {book.path}" + (f" joined to '{competition}'" if competition else ""))
        return
    if competition is None:
        raise KitError("kit submissions: give --competition SLUG (or --local for the ledger alone)")
    items = list_submissions(competition, limit=limit, net=_network(timeout, retries))
    if book.exists():
        apply_listing(book, competition, items)
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


@handle_errors
def lb(
    submissions_dir: SubmissionsDir = Path("submissions"),
    competition: Annotated[str | None, typer.Option("--competition", help="Only this competition's.")] = None,
    out: Annotated[Path | None, typer.Option(help="The PNG (default: SUBMISSIONS/cv_vs_lb.png).")] = None,
    metric: Annotated[str, typer.Option(help="The CV on the x axis: mse or nme.")] = "mse",
    sigma: Annotated[
        float,
        typer.Option(min=0, help="Flag a submission whose public score is off the others' line by this x spread."),
    ] = 3.0,
) -> None:
    """Plot CV against the public score of every scored submission in the ledger: correlation, line of best fit,
    and the submissions whose leaderboard score disagrees with their CV beyond the spread of the others."""
    from kit.cli._common import echo
    from kit.submit.leaderboard import cv_vs_lb, plot_cv_vs_lb
    from kit.submit.ledger import Ledger

    book = Ledger(submissions_dir)
    entries = [e for e in book.read() if competition is None or e.competition == competition]
    result = cv_vs_lb(entries, metric, sigma)
    png = out if out is not None else submissions_dir / "cv_vs_lb.png"
    plot_cv_vs_lb(png, result)
    for p in result.points:
        echo(
            f"{p.label}: CV {p.cv:.4f}  public {p.public:g}"
            + (f"  private {p.entry.private_score:g}" if p.entry.private_score is not None else "")
        )
    r = f"{result.r:.3f}" if result.r == result.r else "n/a (needs 3+ scored submissions)"
    echo(
        f"{len(result.points)} scored submissions; correlation r = {r}; "
        f"public = {result.slope:.4f} x CV {result.intercept:+.4f}"
    )
    for p, residual, spread in result.outliers:
        echo(f"disagrees: {p.label}: public {residual:+.4f} off the others' line (their spread {spread:.4f})")
    if result.without_scores:
        echo("not scored yet: " + ", ".join(f"#{e.id} {e.label}" for e in result.without_scores))
    echo(f"wrote {png}")


def register(app: typer.Typer) -> None:
    app.command()(lb)
    for command in (validate, submit, submissions, download):
        app.command(epilog=EXIT_HELP if command is submit else None)(command)
