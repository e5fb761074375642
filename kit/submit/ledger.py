"""The submission ledger: every upload ``kit submit`` made (and each dry run), what it came from, its CV and the
leaderboard scores Kaggle later gave it.

``SUBMISSIONS/ledger.jsonl`` (one ``Entry`` per line, in the folder of the submitted CSVs) is read and written only
here, rewritten atomically under a lock. An entry is added only once Kaggle accepted the upload (a failed upload
leaves no row; a lost answer to CreateSubmission leaves a ``maybe-submitted`` row without a ref), and scores are
filled in whenever ``kit submit`` or ``kit submissions`` polls Kaggle. A submission Kaggle lists that the ledger
doesn't know (made outside the kit) is added as ``external``: matched by its file's hash to a blend or stack record
or an earlier ledger entry when a file of that name is in the folder, else its source is ``unknown``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from kit.errors import KitError
from kit.io import file_sha256, write_text
from kit.locks import release_lock, wait_for_lock

if TYPE_CHECKING:
    from kit.data.landmarks import TestPoints
    from kit.submit.kaggle import Network, Submission, SubmitResult

LEDGER_FILE = "ledger.jsonl"
LOCK_SECONDS = 30.0
_MATCH_SLACK_S = 600.0  # clock skew allowed when matching a listed submission to a maybe-submitted row


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Source(_Record):
    """What a submitted file came from, and its local score."""

    kind: Literal["blend", "stack", "run", "unknown"] = "unknown"
    name: str | None = None
    record: str | None = None  # the blend's or stack's NAME.json, or the run folder
    runs: tuple[str, ...] = ()  # the runs it is made of
    cv_mse: float | None = None  # nested CV (blend, stack) or OOF (run) MSE
    cv_nme: float | None = None  # the same predictions' NME, percent of the face size
    cv_failure_rate: float | None = None
    cv_kind: str | None = None  # "nested CV" or "OOF"
    note: str | None = None  # why it is unknown, when it is


State = Literal["dry-run", "submitted", "maybe-submitted", "external"]


class Entry(_Record):
    """One submission (or dry run) in the ledger."""

    id: int  # local number, in order of recording
    competition: str
    file: str  # the submitted CSV as given
    file_name: str
    sha256: str | None = None  # the CSV's content hash (None: an external submission whose file isn't here)
    message: str = ""
    created: str  # UTC, ISO 8601
    state: State
    ref: int | None = None  # Kaggle's submission ref
    status: str | None = None  # Kaggle's PENDING, COMPLETE or ERROR
    public_score: float | None = None
    private_score: float | None = None
    scored: str | None = None  # when a public score was first seen (UTC)
    error: str | None = None  # Kaggle's scoring error
    source: Source = Source()

    @property
    def label(self) -> str:
        return self.source.name or Path(self.file_name).stem


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _score(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def ledger_path(folder: str | Path) -> Path:
    return Path(folder) / LEDGER_FILE


class Ledger:
    """``FOLDER/ledger.jsonl``: read it, or change it under its lock (rewritten atomically)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = ledger_path(folder)

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> list[Entry]:
        """Every entry, oldest first (none when the file doesn't exist).

        Raises:
            KitError: a line is not a valid entry, naming the file and line.
        """
        if not self.path.is_file():
            return []
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise KitError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from None
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(Entry.model_validate(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise KitError(f"{self.path}: line {number}: not JSON ({exc.msg})") from None
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in first["loc"]) or "(top level)"
                raise KitError(f"{self.path}: line {number}: key '{key}': {first['msg']}") from None
        return entries

    @contextlib.contextmanager
    def change(self) -> Iterator[list[Entry]]:
        """Yield the entries as a list to change in place; written back (atomically) when the block succeeds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / f".{LEDGER_FILE}.lock"
        wait_for_lock(lock, "the submission ledger", seconds=LOCK_SECONDS)
        try:
            entries = self.read()
            before = list(entries)
            yield entries
            if entries != before:
                write_text(self.path, "".join(e.model_dump_json() + "\n" for e in entries))
        finally:
            release_lock(lock)

    def add(self, **fields) -> Entry:
        """Append an entry (its ``id`` and ``created`` are set here)."""
        with self.change() as entries:
            entry = Entry(id=max((e.id for e in entries), default=0) + 1, created=_now(), **fields)
            entries.append(entry)
        return entry

    def update(self, entry_id: int, **fields) -> None:
        with self.change() as entries:
            for i, entry in enumerate(entries):
                if entry.id == entry_id:
                    entries[i] = entry.model_copy(update=fields)


# ---------------------------------------------------------------- where a file came from


def source_of_run(run_dir: Path) -> Source:
    """A single run's OOF scores (``kit.runs``)."""
    from kit.runs import RunDir

    metrics = RunDir(Path(run_dir)).read_metrics()
    return Source(
        kind="run",
        name=metrics.name,
        record=str(Path(run_dir)),
        runs=(metrics.name,),
        cv_mse=metrics.oof_mse,
        cv_nme=metrics.oof_nme,
        cv_failure_rate=metrics.oof_failure_rate,
        cv_kind="OOF",
    )


def source_of_record(record_path: Path) -> Source:
    """A blend's or stack's nested-CV scores, from its NAME.json."""
    from kit.ensemble.record import read_record

    record = read_record(record_path)
    mse, nme, failure_rate = record.cv
    return Source(
        kind=record.kind,
        name=record.name,
        record=str(record_path),
        runs=record.run_names,
        cv_mse=mse,
        cv_nme=nme,
        cv_failure_rate=failure_rate,
        cv_kind="nested CV",
    )


def resolve_source(csv: Path, sha256: str, given: Path | None = None) -> Source:
    """What ``csv`` came from: ``given`` (a run folder or a NAME.json), else the blend or stack record beside it
    whose submission has this content hash, else ``unknown`` (with the reason).

    Raises:
        KitError: ``given`` is neither a finished run folder nor a blend/stack record.
    """
    if given is not None:
        return source_of_run(given) if Path(given).is_dir() else source_of_record(Path(given))
    record_path = csv.with_suffix(".json")
    if not record_path.is_file():
        return Source(note=f"no {record_path.name} beside it")
    from kit.ensemble.record import read_record

    try:
        record = read_record(record_path)
    except KitError as exc:
        return Source(note=str(exc))
    if record.submission != csv.name or record.submission_sha256 != sha256:
        return Source(note=f"{record_path.name} was written for another version of {csv.name} (hash differs)")
    return source_of_record(record_path)


# ---------------------------------------------------------------- recording submissions and their scores


def _status_fields(s: Submission) -> dict:
    fields = {"status": s.status, "error": s.error, "ref": s.ref or None}
    public, private = _score(s.public_score), _score(s.private_score)
    if public is not None:
        fields["public_score"] = public
    if private is not None:
        fields["private_score"] = private
    return fields


def _apply_status(entry: Entry, s: Submission) -> Entry:
    fields = _status_fields(s)
    if entry.scored is None and fields.get("public_score") is not None:
        fields["scored"] = _now()
    if entry.state == "maybe-submitted":
        fields["state"] = "submitted"
    return entry.model_copy(update=fields)


def submit_recorded(
    path: str | Path,
    competition: str,
    message: str,
    test: TestPoints,
    ledger: Ledger,
    source: Path | None = None,
    dry_run: bool = False,
    wait_s: float = 120.0,
    poll_s: float = 5.0,
    log: Callable[[str], None] = lambda line: None,
    net: Network | None = None,
) -> tuple[SubmitResult, Entry | None]:
    """``kit.submit.kaggle.submit_file``, recorded in ``ledger``: the entry is added as soon as Kaggle accepted the
    upload (a dry run's replaces an earlier dry run of the same file), and its status and scores follow the polls.

    A ledger that can't be written after the upload never turns a submission into an error: it is logged.

    Raises:
        KitError: ``source`` is not a run folder or a blend/stack record (before anything is uploaded); the errors
            of ``submit_file``. A lost answer to CreateSubmission records a ``maybe-submitted`` entry first.
    """
    from kit.submit.kaggle import MaybeSubmittedError, submit_file

    path = Path(path)
    if source is not None:
        resolve_source(path, "", source)  # a bad --source fails before anything is uploaded
    entry_id: int | None = None
    resolved: dict = {}

    def common(sha256: str) -> dict:
        if "source" not in resolved:
            resolved["source"] = resolve_source(path, sha256, source)
        return {
            "competition": competition,
            "file": str(path),
            "file_name": path.name,
            "sha256": sha256,
            "message": message,
            "source": resolved["source"],
        }

    def safely(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except KitError as exc:
            log(f"warning: {ledger.path} not updated ({what}): {exc}")

    def uploaded(result: SubmitResult) -> None:
        def add() -> None:
            nonlocal entry_id
            entry_id = ledger.add(state="submitted", ref=result.ref or None, **common(result.sha256)).id

        safely("upload", add)

    def status(s: Submission) -> None:
        def change() -> None:
            with ledger.change() as entries:
                for i, entry in enumerate(entries):
                    if entry.id == entry_id:
                        entries[i] = _apply_status(entry, s)

        if entry_id is not None:
            safely("status", change)

    try:
        result = submit_file(
            path,
            competition,
            message,
            test,
            dry_run=dry_run,
            wait_s=wait_s,
            poll_s=poll_s,
            log=log,
            net=net,
            on_upload=uploaded,
            on_status=status,
        )
    except MaybeSubmittedError:
        sha256 = file_sha256(path)
        safely("maybe submitted", lambda: ledger.add(state="maybe-submitted", **common(sha256)))
        raise
    if not dry_run:
        entries = [e for e in ledger.read() if e.id == entry_id] if entry_id is not None else []
        return result, entries[0] if entries else None

    def dry() -> Entry:
        with ledger.change() as entries:
            entries[:] = [
                e
                for e in entries
                if not (e.state == "dry-run" and e.sha256 == result.sha256 and e.competition == competition)
            ]
            entry = Entry(
                id=max((e.id for e in entries), default=0) + 1, created=_now(), state="dry-run", **common(result.sha256)
            )
            entries.append(entry)
        return entry

    try:
        return result, dry()
    except KitError as exc:
        log(f"warning: {ledger.path} not updated (dry run): {exc}")
        return result, None


def _listed_near(s: Submission, entry: Entry) -> bool:
    try:
        listed = datetime.fromisoformat(s.date)
        created = datetime.fromisoformat(entry.created)
    except ValueError:
        return True
    if listed.tzinfo is None:
        listed = listed.replace(tzinfo=timezone.utc)
    return listed.timestamp() >= created.timestamp() - _MATCH_SLACK_S


def _external_source(folder: Path, s: Submission, entries: Sequence[Entry]) -> tuple[str | None, Source]:
    """The hash and source of a submission made outside the kit, from a file of its name in ``folder``."""
    local = folder / s.file_name if s.file_name else None
    if local is None or not local.is_file():
        return None, Source(note=f"{s.file_name or 'its file'} is not in {folder}")
    sha256 = file_sha256(local)
    known = next((e for e in entries if e.sha256 == sha256 and e.source.kind != "unknown"), None)
    if known is not None:
        return sha256, known.source
    return sha256, resolve_source(local, sha256)


def apply_listing(ledger: Ledger, competition: str, items: Sequence[Submission]) -> list[Entry]:
    """Fill in the statuses and scores Kaggle lists; adopt ``maybe-submitted`` rows Kaggle shows; add submissions
    the ledger doesn't know as ``external``. Returns the competition's entries, oldest first."""
    with ledger.change() as entries:
        by_ref = {e.ref: i for i, e in enumerate(entries) if e.ref is not None and e.competition == competition}
        for s in sorted(items, key=lambda item: item.date):
            if s.ref in by_ref:
                i = by_ref[s.ref]
                entries[i] = _apply_status(entries[i], s)
                continue
            maybe = next(
                (
                    i
                    for i, e in enumerate(entries)
                    if e.state == "maybe-submitted"
                    and e.competition == competition
                    and e.message == s.description
                    and s.file_name in ("", e.file_name)
                    and _listed_near(s, e)
                ),
                None,
            )
            if maybe is not None:
                entries[maybe] = _apply_status(entries[maybe], s)
                by_ref[s.ref] = maybe
                continue
            sha256, source = _external_source(ledger.folder, s, entries)
            entry = Entry(
                id=max((e.id for e in entries), default=0) + 1,
                competition=competition,
                file=str(ledger.folder / s.file_name) if s.file_name else "",
                file_name=s.file_name,
                sha256=sha256,
                message=s.description,
                created=s.date or _now(),
                state="external",
                source=source,
            )
            entries.append(_apply_status(entry, s))
            by_ref[s.ref] = len(entries) - 1
        return [e for e in entries if e.competition == competition]
