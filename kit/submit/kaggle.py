"""Talking to Kaggle through the official client (``kaggle`` 2.x over ``kagglesdk``): upload, poll, list, download.

The client is imported lazily and quietly: ``import kaggle`` authenticates at import time (printing help, or
calling the network when a token is set), so its API module is loaded without running the package's
``__init__``. Every failure mode ends in a one-line :class:`KaggleError`; the client's own prints are captured,
and no message ever contains the key or token.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.data.landmarks import TestPoints
from kit.errors import KitError
from kit.io import file_sha256
from kit.submit.format import validate_submission

NO_CREDENTIALS = (
    "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save kaggle.json from "
    "https://www.kaggle.com/settings/api as {config}"
)


class KaggleError(KitError):
    """A call to Kaggle failed."""


class CredentialsError(KaggleError):
    """Credentials are missing or were rejected."""


class UploadError(KaggleError):
    """The submission file was not accepted: nothing was submitted."""


@dataclass(frozen=True)
class Submission:
    """One submission as Kaggle lists it."""

    ref: int
    date: str
    description: str
    file_name: str
    status: str  # PENDING, COMPLETE or ERROR
    public_score: str | None
    private_score: str | None
    error: str | None

    def describe(self) -> str:
        """``STATUS[, public score X][, private score Y]``."""
        scores = f", public score {self.public_score}" if self.public_score else ""
        scores += f", private score {self.private_score}" if self.private_score else ""
        return f"{self.status}{scores}"


@dataclass(frozen=True)
class SubmitResult:
    """What ``submit_file`` did: the validated file, and the submission unless it was a dry run."""

    path: Path
    rows: int
    points: int
    sha256: str
    message: str | None = None  # Kaggle's answer to the upload
    ref: int | None = None
    submission: Submission | None = None  # the last status seen while polling


def _client_class() -> type:
    """``KaggleApi``, imported without running ``kaggle/__init__.py`` (which authenticates on import)."""
    if "kaggle" not in sys.modules:
        spec = importlib.util.find_spec("kaggle")
        if spec is None or not spec.submodule_search_locations:
            raise KaggleError("the kaggle client is not installed (pip install kaggle)")
        package = types.ModuleType("kaggle")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        from importlib.metadata import version

        package.__version__ = version("kaggle")  # read by the client's version check
        sys.modules["kaggle"] = package
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except OSError as exc:  # the class body creates its config folder
        raise KaggleError(f"cannot set up the kaggle client: {exc}") from None
    return KaggleApi


def _new_api() -> Any:
    """An unauthenticated client that reads its settings from the environment now, not at import time."""
    api = _client_class()()
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        api.config_dir, api.config = config_dir, os.path.join(config_dir, api.config_file)
    # Never verbose: the client's verbose mode prints request headers, credentials included.
    api.args = ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []
    return api


def _secrets(api: Any) -> list[str]:
    values = api.config_values
    secrets = [values.get("key") or "", values.get("token") or ""]
    if values.get("username") and values.get("key"):
        secrets.append(base64.b64encode(f"{values['username']}:{values['key']}".encode()).decode())
    return [s for s in secrets if len(s) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _http_error(exc: Exception, action: str, competition: str, secrets: list[str]) -> KaggleError:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    detail = _scrub(_one_line(str(exc)), secrets)
    if code == 401:
        return CredentialsError(
            f"Kaggle rejected the credentials (HTTP 401) while {action}: check KAGGLE_USERNAME/KAGGLE_KEY or "
            "kaggle.json (regenerate the token at https://www.kaggle.com/settings/api)"
        )
    if code == 403:
        return KaggleError(
            f"Kaggle refused {action} for competition '{competition}' (HTTP 403: {detail}); have you joined it "
            "and accepted its rules?"
        )
    if code == 404:
        return KaggleError(f"competition '{competition}' not found (HTTP 404) while {action}")
    if code == 429:
        return KaggleError(f"Kaggle is rate limiting (HTTP 429) while {action}: try again later")
    if code is None:
        return KaggleError(f"cannot reach Kaggle while {action}: {type(exc).__name__}: {detail}")
    return KaggleError(f"HTTP {code} from Kaggle while {action} for '{competition}': {detail}")


@contextlib.contextmanager
def _kaggle(action: str, competition: str) -> Iterator[tuple[Any, io.StringIO]]:
    """An authenticated client; the client's prints are captured and its errors become one-line KaggleErrors."""
    import requests

    api = _new_api()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            api.authenticate()
    except SystemExit:  # the client prints help and exits when it finds no credentials
        raise CredentialsError(NO_CREDENTIALS.format(config=api.config)) from None
    except requests.RequestException as exc:  # a token is checked online
        raise _http_error(exc, "checking the token", competition, _secrets(api)) from None
    secrets = _secrets(api)
    try:
        with contextlib.redirect_stdout(captured):
            yield api, captured
    except requests.RequestException as exc:
        raise _http_error(exc, action, competition, secrets) from None


def _submission(item: Any) -> Submission:
    date = getattr(item, "date", None)
    status = getattr(item, "status", None)
    return Submission(
        ref=int(item.ref or 0),
        date=date.isoformat(timespec="seconds") if date else "",
        description=item.description or "",
        file_name=item.file_name or "",
        status=getattr(status, "name", str(status)),
        public_score=item.public_score or None,
        private_score=item.private_score or None,
        error=item.error_description or None,
    )


def upload(path: str | Path, competition: str, message: str) -> tuple[int, str]:
    """Upload a submission file; returns Kaggle's submission ref (0 if it sent none) and message.

    Raises:
        UploadError: the client reported a failed upload (it returns, rather than raises, on a refused PUT).
        KaggleError: credentials, HTTP or network failures.
    """
    path = Path(path)
    with _kaggle("uploading the submission", competition) as (api, captured):
        response = api.competition_submit(str(path), message, competition, quiet=True)
        secrets = _secrets(api)
    text = response.message or ""
    if text == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        printed = [line for line in captured.getvalue().splitlines() if line.strip()]
        hint = f"; the client said: {_scrub(_one_line(printed[-1]), secrets)}" if printed else ""
        raise UploadError(f"upload of {path} to '{competition}' failed: {text} (nothing was submitted){hint}")
    return int(response.ref or 0), text


def list_submissions(competition: str, limit: int = 20) -> list[Submission]:
    """The most recent submissions to ``competition``, newest first."""
    with _kaggle("listing submissions", competition) as (api, _):
        items = api.competition_submissions(competition, page_size=limit) or []
    return [_submission(item) for item in items if item is not None][:limit]


def wait_for_score(
    competition: str,
    ref: int,
    timeout_s: float,
    interval_s: float = 5.0,
    on_status: Callable[[Submission], None] | None = None,
) -> Submission | None:
    """Poll until submission ``ref`` is scored or ``timeout_s`` passes; returns its last seen state.

    Raises:
        KaggleError: the submission finished in ERROR (scoring failed).
    """
    deadline = time.monotonic() + timeout_s
    last: Submission | None = None
    while True:
        found = next((s for s in list_submissions(competition) if s.ref == ref), None)
        if found is not None and (last is None or found.status != last.status) and on_status:
            on_status(found)
        last = found or last
        if last is not None and last.status == "ERROR":
            raise KaggleError(f"submission {ref} to '{competition}' failed scoring: {last.error or 'no reason given'}")
        if (last is not None and last.status == "COMPLETE") or time.monotonic() + interval_s > deadline:
            return last
        time.sleep(interval_s)


def submit_file(
    path: str | Path,
    competition: str,
    message: str,
    test: TestPoints,
    dry_run: bool = False,
    wait_s: float = 120.0,
    poll_s: float = 5.0,
    log: Callable[[str], None] = lambda line: None,
) -> SubmitResult:
    """Validate a submission against test_points.csv, upload it, and poll for its score, reporting to ``log``.

    The file is validated before anything touches the network; a dry run stops there.
    """
    path = Path(path)
    values = validate_submission(path, test)
    checked = SubmitResult(path=path, rows=values.shape[0], points=values.shape[1], sha256=file_sha256(path))
    log(f"valid: {path}: {checked.rows} rows x {checked.points} points, sha256 {checked.sha256[:12]}")
    if dry_run:
        log(f"dry run: nothing uploaded to '{competition}'")
        return checked
    ref, text = upload(path, competition, message)
    log(f"uploaded to '{competition}': {text or 'no message'} (ref {ref or 'none'})")
    status = None
    if ref and wait_s > 0:
        status = wait_for_score(competition, ref, wait_s, poll_s, on_status=lambda s: log(f"status: {s.describe()}"))
        if status is None or status.status != "COMPLETE":
            log(f"not scored after {wait_s:g} s: see 'kit submissions --competition {competition}'")
    return dataclasses.replace(checked, message=text, ref=ref, submission=status)


def _unpack(archive: Path, out_dir: Path, competition: str) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise KaggleError(f"'{competition}': the downloaded archive is corrupt ({bad})")
            names = zf.namelist()
            zf.extractall(out_dir)  # drops absolute prefixes and '..' from member names
    except zipfile.BadZipFile:
        raise KaggleError(f"'{competition}': the downloaded archive is not a valid zip file") from None
    tops = sorted({Path(name).parts[0] for name in names if Path(name).parts})
    return [out_dir / top for top in tops]


def download_competition(competition: str, out_dir: str | Path) -> list[Path]:
    """Download the competition's data and unpack it into ``out_dir``; returns the top-level entries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kit-download-", dir=out_dir) as tmp:
        with _kaggle("downloading the data", competition) as (api, _):
            api.competition_download_files(competition, path=tmp, force=True, quiet=True)
        files = [p for p in Path(tmp).iterdir() if p.is_file() and not p.name.endswith(".kaggle-partial")]
        if not files:
            raise KaggleError(f"'{competition}': the download produced no file")
        archive = files[0]
        if archive.suffix == ".zip":
            return _unpack(archive, out_dir, competition)
        target = out_dir / archive.name
        shutil.move(archive, target)
        return [target]
