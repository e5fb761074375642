"""Talking to Kaggle through the official client (``kaggle`` 2.x over ``kagglesdk``): upload, poll, list, download.

The client is imported lazily and quietly: ``import kaggle`` authenticates at import time (printing help, or
calling the network when a token is set), so its API module is loaded without running the package's
``__init__``. Every failure mode ends in a one-line :class:`KaggleError`; the client's own prints are captured,
and no message ever contains the key or token.

While the kit drives the client, every HTTP request it sends gets a timeout (:class:`Network`), the client's
hidden urllib3 retries are switched off (they made a dropped upload minutes of silence), and each request is
journaled, so a failure can say which call failed and what state it left. Idempotent calls (listing, polling,
download) are retried with backoff on HTTP 5xx, timeouts and dropped connections, each retry announced on
stderr; the submission calls (StartSubmissionUpload, the PUT, CreateSubmission) are never retried.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import re
import shutil
import sys
import tempfile
import time
import types
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kit.errors import KitError

if TYPE_CHECKING:
    from kit.data.landmarks import TestPoints

T = TypeVar("T")

NO_CREDENTIALS = (
    "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save kaggle.json from "
    "https://www.kaggle.com/settings/api as {config}"
)

# Exit codes of `kit submit` (and the other Kaggle commands), in one place.
EXIT_OK = 0
EXIT_FAILED = 1  # nothing was submitted (or the submission failed scoring, or a listing/download failed)
EXIT_POLL_FAILED = 3  # the submission was created (its ref is printed) but polling its status failed
EXIT_MAYBE_SUBMITTED = 4  # the connection was lost while Kaggle created the submission: it may exist
EXIT_INTERRUPTED = 130  # Ctrl-C: the message says what state was left
EXIT_CODES = {
    EXIT_OK: "uploaded (scored, or still pending when --wait ran out)",
    EXIT_FAILED: "failed and nothing was submitted, or the submission failed scoring",
    EXIT_POLL_FAILED: "submitted (ref printed) but polling its status failed",
    EXIT_MAYBE_SUBMITTED: "connection lost while the submission was being created: it may exist",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); the message says what was left",
}

TIMEOUT_ENV, RETRIES_ENV, BACKOFF_ENV = "KIT_KAGGLE_TIMEOUT", "KIT_KAGGLE_RETRIES", "KIT_KAGGLE_BACKOFF"
_MIN_CALL_S = 1.0  # the shortest timeout a call gets when a --wait deadline is close
_CREATED_SLACK_S = 600.0  # clock skew allowed when matching a listed submission to a lost create call
_sleep = time.sleep  # patched by tests


class KaggleError(KitError):
    """A call to Kaggle failed.

    Attributes:
        reason: what went wrong in a few words ("HTTP 502", "no answer within 30 s", "connection dropped").
        transient: whether retrying an idempotent call may help (5xx, timeouts, dropped connections).
        call: the request that failed ("ListSubmissions", "PUT", ...), when known.
        ref: the submission the error concerns, when one was created.
    """

    exit_code = EXIT_FAILED

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        transient: bool = False,
        call: str | None = None,
        ref: int | None = None,
    ):
        super().__init__(message)
        self.reason, self.transient, self.call, self.ref = reason, transient, call, ref


class CredentialsError(KaggleError):
    """Credentials are missing or were rejected."""


class UploadError(KaggleError):
    """The submission file was not accepted: nothing was submitted."""


class ScoringError(KaggleError):
    """The submission was created but finished in ERROR."""


class PollError(KaggleError):
    """The submission was created, but polling its status failed."""

    exit_code = EXIT_POLL_FAILED


class MaybeSubmittedError(KaggleError):
    """The connection was lost while Kaggle created the submission: it may exist."""

    exit_code = EXIT_MAYBE_SUBMITTED


class SubmitInterrupted(KaggleError):
    """Ctrl-C during a submission; the message says what state it left."""

    exit_code = EXIT_INTERRUPTED


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _env_number(name: str, default: float, kind: type, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:
        raise KaggleError(f"{name} must be a number >= {minimum:g}, got '{raw}'")
    return value


@dataclass(frozen=True)
class Network:
    """How the kit talks to Kaggle.

    Attributes:
        timeout_s: seconds one HTTP request may take to connect or to send the next bytes of its answer.
        retries: retries of an idempotent call (listing, polling, download) after a transient failure.
        backoff_s: the first retry waits this long, each further one twice as long.
        notify: where retry notices go (stderr by default).
    """

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    notify: Callable[[str], None] = _stderr

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise KaggleError(f"the Kaggle timeout must be positive, got {self.timeout_s:g} s")
        if self.retries < 0 or self.backoff_s < 0:
            raise KaggleError(f"retries and backoff must be >= 0, got {self.retries} and {self.backoff_s:g} s")

    @classmethod
    def from_env(
        cls, timeout_s: float | None = None, retries: int | None = None, notify: Callable[[str], None] | None = None
    ) -> Network:
        """Settings from the arguments, else ``KIT_KAGGLE_TIMEOUT``/``_RETRIES``/``_BACKOFF``, else the defaults."""
        return cls(
            timeout_s=timeout_s if timeout_s is not None else _env_number(TIMEOUT_ENV, cls.timeout_s, float, 0.001),
            retries=retries if retries is not None else int(_env_number(RETRIES_ENV, cls.retries, int, 0)),
            backoff_s=_env_number(BACKOFF_ENV, cls.backoff_s, float, 0),
            notify=notify or _stderr,
        )


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


@dataclass
class _Call:
    """One HTTP request the client sent, and what became of it."""

    name: str  # the API method ("CreateSubmission"), "PUT" for the upload, else "GET <file>"
    status: int | None = None  # None: no answer (timeout, dropped connection, Ctrl-C)
    error: BaseException | None = None


def _call_name(request: Any) -> str:
    path = urllib.parse.urlsplit(request.url).path
    if "/api/v1/" in path:
        return path.rsplit("/", 1)[-1]
    if request.method == "PUT":
        return "PUT"
    return f"{request.method} {path.rsplit('/', 1)[-1] or path}"


@dataclass
class _Guard:
    """While active, every request any ``requests`` session sends gets ``timeout_s``, no hidden urllib3 retries,
    and an entry in ``calls``. Not thread-safe: it patches ``requests.Session.send`` for the duration."""

    timeout_s: float
    calls: list[_Call] = field(default_factory=list)

    def last(self, name: str) -> _Call | None:
        return next((c for c in reversed(self.calls) if c.name == name), None)

    @contextlib.contextmanager
    def active(self) -> Iterator[_Guard]:
        import requests
        from urllib3.util.retry import Retry

        original = requests.Session.send
        guard = self

        def send(session: Any, request: Any, **kwargs: Any) -> Any:
            limit = kwargs.get("timeout")
            if limit is None or (isinstance(limit, (int, float)) and limit > guard.timeout_s):
                kwargs["timeout"] = guard.timeout_s
            for adapter in session.adapters.values():
                if hasattr(adapter, "max_retries"):
                    adapter.max_retries = Retry(0, read=False)  # the kit retries, visibly, and only what is safe
            call = _Call(_call_name(request))
            guard.calls.append(call)
            try:
                response = original(session, request, **kwargs)
            except BaseException as exc:
                call.error = exc
                raise
            call.status = response.status_code
            return response

        requests.Session.send = send
        try:
            yield self
        finally:
            requests.Session.send = original


def _reason(exc: BaseException, timeout_s: float) -> tuple[str, bool]:
    """``(what went wrong in a few words, whether a retry may help)``."""
    import requests

    code = getattr(getattr(exc, "response", None), "status_code", None)
    if code is not None:
        return f"HTTP {code}", code >= 500
    text = str(exc)
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return f"no answer within {timeout_s:.3g} s", True
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        refused = any(word in text for word in ("NewConnectionError", "Connection refused", "NameResolution"))
        return ("cannot connect" if refused else "connection dropped"), True
    return type(exc).__name__, False


def _http_error(
    exc: Exception, action: str, competition: str, secrets: list[str], guard: _Guard, suffix: str = ""
) -> KaggleError:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    detail = re.sub(r" for url: \S+", "", _scrub(_one_line(str(exc)), secrets))  # requests' own text names the URL
    reason, transient = _reason(exc, guard.timeout_s)
    call = guard.calls[-1].name if guard.calls else None
    facts = {"reason": reason, "transient": transient, "call": call}
    if code == 401:
        return CredentialsError(
            f"Kaggle rejected the credentials (HTTP 401) while {action}: check KAGGLE_USERNAME/KAGGLE_KEY or "
            f"kaggle.json (regenerate the token at https://www.kaggle.com/settings/api){suffix}",
            **facts,
        )
    if code == 403:
        message = (
            f"Kaggle refused {action} for competition '{competition}' (HTTP 403: {detail}); have you joined it "
            "and accepted its rules?"
        )
    elif code == 404:
        message = f"competition '{competition}' not found (HTTP 404) while {action}"
    elif code == 429:
        message = f"Kaggle is rate limiting (HTTP 429) while {action}: try again later"
    elif code is not None:
        message = f"HTTP {code} from Kaggle while {action} for '{competition}': {detail}"
    elif reason == "cannot connect":
        message = f"cannot reach Kaggle while {action}: {type(exc).__name__}: {detail}"
    elif reason.startswith("no answer"):
        message = f"Kaggle did not answer {call or 'a request'} within {guard.timeout_s:.3g} s while {action}"
    elif reason == "connection dropped":
        message = f"Kaggle dropped the connection during {call or 'a request'} while {action}"
    else:
        message = f"Kaggle call failed while {action}: {type(exc).__name__}: {detail}"
    return KaggleError(message + suffix, **facts)


@contextlib.contextmanager
def _kaggle(action: str, competition: str, guard: _Guard) -> Iterator[tuple[Any, io.StringIO]]:
    """An authenticated client; the client's prints are captured and its errors become one-line KaggleErrors."""
    import requests

    with guard.active():
        api = _new_api()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                api.authenticate()
        except SystemExit:  # the client prints help and exits when it finds no credentials
            raise CredentialsError(NO_CREDENTIALS.format(config=api.config)) from None
        except requests.RequestException as exc:  # a token is checked online
            raise _http_error(exc, "checking the token", competition, _secrets(api), guard) from None
        secrets = _secrets(api)
        try:
            with contextlib.redirect_stdout(captured):
                yield api, captured
        except requests.RequestException as exc:
            raise _http_error(exc, action, competition, secrets, guard) from None


def _with_retries(attempt: Callable[[float], T], net: Network, deadline: float | None = None) -> T:
    """Run an idempotent ``attempt(timeout_s)``, retrying transient failures with doubling backoff.

    With a ``deadline`` (``time.monotonic()``), calls are cut to the time left (at least ``_MIN_CALL_S``) and no
    retry starts after it.
    """
    tries = 0
    while True:
        timeout_s = net.timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, max(deadline - time.monotonic(), _MIN_CALL_S))
        try:
            return attempt(timeout_s)
        except KaggleError as exc:
            delay = net.backoff_s * 2**tries
            late = deadline is not None and time.monotonic() + delay >= deadline
            if not exc.transient or tries >= net.retries or late:
                if tries:
                    exc.args = (f"{exc} (gave up after {tries + 1} tries)",)
                raise
            tries += 1
            net.notify(
                f"Kaggle: {exc.call or 'a call'} failed ({exc.reason}), retry {tries}/{net.retries} in {delay:.3g} s"
            )
            _sleep(delay)


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


def _list_once(competition: str, limit: int, timeout_s: float) -> list[Submission]:
    with _kaggle("listing submissions", competition, _Guard(timeout_s)) as (api, _):
        items = api.competition_submissions(competition, page_size=limit) or []
    return [_submission(item) for item in items if item is not None][:limit]


def list_submissions(competition: str, limit: int = 20, net: Network | None = None) -> list[Submission]:
    """The most recent submissions to ``competition``, newest first (retried on transient failures)."""
    net = net or Network.from_env()
    return _with_retries(lambda timeout_s: _list_once(competition, limit, timeout_s), net)


def _check_hint(competition: str) -> str:
    return f"'kit submissions --competition {competition}'"


def _listed_since(date: str, since: float) -> bool:
    try:
        moment = datetime.fromisoformat(date)
    except ValueError:
        return True  # no usable date: don't rule it out
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # Kaggle's dates are UTC
    return moment.timestamp() >= since - _CREATED_SLACK_S


def _find_created(competition: str, message: str, file_name: str, since: float, timeout_s: float) -> str:
    """One listing (no retries) to tell whether a create call whose answer was lost made the submission."""
    check = _check_hint(competition)
    try:
        items = _list_once(competition, 20, timeout_s)
    except KaggleError as exc:
        return f"listing submissions to check failed too ({exc.reason or exc}); check with {check} before resubmitting"
    for s in items:
        if s.description == message and s.file_name in ("", file_name) and _listed_since(s.date, since):
            return f"Kaggle lists it as submission {s.ref} ({s.describe()}): do not resubmit; follow it with {check}"
    return f"it is not among the latest submissions yet; check again with {check} before resubmitting"


def _interrupted(guard: _Guard, competition: str) -> SubmitInterrupted:
    """What a Ctrl-C during the upload left behind, read from the journal of calls."""
    create, put = guard.last("CreateSubmission"), guard.last("PUT")
    if create is not None and create.status == 200:
        return SubmitInterrupted(
            f"interrupted: the submission to '{competition}' was created but its ref was not read; "
            f"follow it with {_check_hint(competition)}"
        )
    if create is not None:
        return SubmitInterrupted(
            f"interrupted while Kaggle was creating the submission to '{competition}': it may exist; "
            f"check with {_check_hint(competition)} before resubmitting"
        )
    if put is not None and put.status in (200, 201):
        return SubmitInterrupted(
            f"interrupted: the file was uploaded to '{competition}' but no submission was created "
            "(nothing was submitted)"
        )
    if put is not None:
        return SubmitInterrupted(
            f"interrupted during the upload to '{competition}': no submission was created (nothing was submitted)"
        )
    return SubmitInterrupted(f"interrupted before the file was uploaded to '{competition}': nothing was submitted")


def upload(path: str | Path, competition: str, message: str, net: Network | None = None) -> tuple[int, str]:
    """Upload a submission file; returns Kaggle's submission ref (0 if it sent none) and message.

    Nothing here is retried: a blind retry could submit twice and burn the daily quota.

    Raises:
        UploadError: the PUT of the file failed, timed out or was refused: nothing was submitted.
        MaybeSubmittedError: the answer to CreateSubmission was lost (5xx, timeout, dropped connection): the
            submission may exist; the message says whether a listing shows it.
        SubmitInterrupted: Ctrl-C; the message says what state was left.
        KaggleError: credentials, HTTP or network failures before the submission was created.
    """
    import requests

    path = Path(path)
    net = net or Network.from_env()
    guard = _Guard(net.timeout_s)
    started = time.time()
    try:
        failure = None
        with _kaggle("uploading the submission", competition, guard) as (api, captured):
            try:
                response = api.competition_submit(str(path), message, competition, quiet=True)
            except requests.RequestException as exc:
                failure = exc
            secrets = _secrets(api)
        if failure is not None:
            raise _create_failure(failure, path, competition, message, started, secrets, guard)
    except KeyboardInterrupt:
        raise _interrupted(guard, competition) from None
    text = response.message or ""
    if text == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise _put_failure(path, competition, text, captured.getvalue(), secrets, guard)
    return int(response.ref or 0), text


def _put_failure(
    path: Path, competition: str, text: str, printed: str, secrets: list[str], guard: _Guard
) -> UploadError:
    put = guard.last("PUT")
    if put is not None and put.error is not None:
        reason, _ = _reason(put.error, guard.timeout_s)
        what = f"the PUT of the file failed ({reason})"
    elif put is not None:
        reason, what = f"HTTP {put.status}", f"the PUT of the file got HTTP {put.status}"
    else:
        lines = [line for line in printed.splitlines() if line.strip()]
        reason, what = "upload failed", f"the client said: {_scrub(_one_line(lines[-1]), secrets)}" if lines else ""
    what = f"; {what}" if what else ""
    return UploadError(
        f"upload of {path} to '{competition}' failed: {text} (nothing was submitted; safe to run again){what}",
        reason=reason,
        call="PUT",
    )


def _create_failure(
    exc: Exception, path: Path, competition: str, message: str, started: float, secrets: list[str], guard: _Guard
) -> KaggleError:
    """The error for a failed StartSubmissionUpload or CreateSubmission (the client raises; the PUT doesn't)."""
    create = guard.last("CreateSubmission")
    if create is None:
        return _http_error(
            exc, "starting the upload", competition, secrets, guard, " (nothing was submitted; safe to run again)"
        )
    reason, _ = _reason(exc, guard.timeout_s)
    if (create.status is not None and create.status < 500) or reason == "cannot connect":  # refused, or never sent
        return _http_error(exc, "creating the submission", competition, secrets, guard, " (nothing was submitted)")
    finding = _find_created(competition, message, path.name, started, guard.timeout_s)
    return MaybeSubmittedError(
        f"lost the answer to CreateSubmission for '{competition}' ({reason}): the submission may exist; {finding}",
        reason=reason,
        call="CreateSubmission",
    )


def wait_for_score(
    competition: str,
    ref: int,
    timeout_s: float,
    interval_s: float = 5.0,
    on_status: Callable[[Submission], None] | None = None,
    net: Network | None = None,
) -> Submission | None:
    """Poll until submission ``ref`` is scored or ``timeout_s`` passes; returns its last seen state.

    ``timeout_s`` bounds the whole wait, calls and retries included (a call may run up to ``_MIN_CALL_S`` past it).

    Raises:
        ScoringError: the submission finished in ERROR (scoring failed).
        KaggleError: polling failed (after retries, or the deadline passed while retrying).
    """
    net = net or Network.from_env()
    deadline = time.monotonic() + timeout_s
    last: Submission | None = None
    while True:
        items = _with_retries(lambda call_s: _list_once(competition, 20, call_s), net, deadline)
        found = next((s for s in items if s.ref == ref), None)
        if found is not None and (last is None or found.status != last.status) and on_status:
            on_status(found)
        last = found or last
        if last is not None and last.status == "ERROR":
            raise ScoringError(
                f"submission {ref} to '{competition}' failed scoring: {last.error or 'no reason given'}", ref=ref
            )
        left = deadline - time.monotonic()
        if (last is not None and last.status == "COMPLETE") or left <= 0:
            return last
        _sleep(min(interval_s, left))


def submit_file(
    path: str | Path,
    competition: str,
    message: str,
    test: TestPoints,
    dry_run: bool = False,
    wait_s: float = 120.0,
    poll_s: float = 5.0,
    log: Callable[[str], None] = lambda line: None,
    net: Network | None = None,
    on_upload: Callable[[SubmitResult], None] | None = None,
    on_status: Callable[[Submission], None] | None = None,
) -> SubmitResult:
    """Validate a submission against test_points.csv, upload it, and poll for its score, reporting to ``log``.

    The file is validated before anything touches the network; a dry run stops there. ``on_upload`` gets the
    result as soon as Kaggle accepted the upload (with its ref), ``on_status`` each new status seen while polling.

    Raises:
        PollError: the submission was created but polling its status failed (exit code ``EXIT_POLL_FAILED``).
        SubmitInterrupted: Ctrl-C (``EXIT_INTERRUPTED``); see ``upload`` for the other errors.
    """
    from kit.io import file_sha256
    from kit.submit.format import validate_submission

    path = Path(path)
    try:
        values = validate_submission(path, test)
        checked = SubmitResult(path=path, rows=values.shape[0], points=values.shape[1], sha256=file_sha256(path))
    except KeyboardInterrupt:
        raise SubmitInterrupted(f"interrupted while validating {path}: nothing was submitted") from None
    log(f"valid: {path}: {checked.rows} rows x {checked.points} points, sha256 {checked.sha256[:12]}")
    if dry_run:
        log(f"dry run: nothing uploaded to '{competition}'")
        return checked
    net = net or Network.from_env()
    ref, text = upload(path, competition, message, net)
    status = None
    check = _check_hint(competition)

    def seen(s: Submission) -> None:
        log(f"status: {s.describe()}")
        if on_status is not None:
            on_status(s)

    try:
        log(f"uploaded to '{competition}': {text or 'no message'} (ref {ref or 'none'})")
        if on_upload is not None:
            on_upload(dataclasses.replace(checked, message=text, ref=ref))
        if ref and wait_s > 0:
            status = wait_for_score(competition, ref, wait_s, poll_s, on_status=seen, net=net)
            if status is None or status.status != "COMPLETE":
                log(f"not scored after {wait_s:g} s: see {check}")
    except KeyboardInterrupt:
        raise SubmitInterrupted(
            f"interrupted: submission {ref} to '{competition}' was created; polling stopped: follow it with {check}",
            ref=ref,
        ) from None
    except ScoringError:
        raise
    except KaggleError as exc:
        raise PollError(
            f"submission {ref} to '{competition}' was created, but polling its status failed: {exc}; "
            f"follow it with {check} (do not resubmit)",
            reason=exc.reason,
            call=exc.call,
            ref=ref,
        ) from None
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


def download_competition(competition: str, out_dir: str | Path, net: Network | None = None) -> list[Path]:
    """Download the competition's data and unpack it into ``out_dir``; returns the top-level entries.

    A transient failure restarts the download from scratch (the client's own silent retries are off).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net or Network.from_env()
    with tempfile.TemporaryDirectory(prefix=".kit-download-", dir=out_dir) as tmp:

        def attempt(timeout_s: float) -> None:
            for leftover in Path(tmp).iterdir():
                leftover.unlink()
            with _kaggle("downloading the data", competition, _Guard(timeout_s)) as (api, _):
                api.download_file = functools.partial(type(api).download_file, api, max_retries=0)
                api.competition_download_files(competition, path=tmp, force=True, quiet=True)

        _with_retries(attempt, net)
        files = [p for p in Path(tmp).iterdir() if p.is_file() and not p.name.endswith(".kaggle-partial")]
        if not files:
            raise KaggleError(f"'{competition}': the download produced no file")
        archive = files[0]
        if archive.suffix == ".zip":
            return _unpack(archive, out_dir, competition)
        target = out_dir / archive.name
        shutil.move(archive, target)
        return [target]


# Shared with ``kit.bundle.upload`` (a bundle as a Kaggle dataset): the same guard, client, retries and reasons.
Guard, kaggle_client, with_retries, failure_reason = _Guard, _kaggle, _with_retries, _reason
