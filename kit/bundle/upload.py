"""``kit bundle upload``: a bundle as a Kaggle dataset, created or given a new version, through the official client.

Folders go up as zip archives (``dir_mode="zip"``: the client's default skips them, and the dataset would lack its
weights); Kaggle unpacks them into the same tree. The calls run under the guard of ``kit submit``
(``kit.submit.kaggle``): every request has the timeout, the client's hidden retries are off (its ``with_retry``
and its loop of upload resumes), and the kit retries, visibly, only what creates nothing: the status check, and a
whole attempt that failed before the create call (an interrupted file upload resumes where the server has it).
The create call itself is never retried: when its answer is lost the dataset (or version) may exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.bundle.manifest import DATASET_METADATA_FILE, KERNEL_METADATA_FILE, open_bundle
from kit.bundle.metadata import check_dataset, write_metadata
from kit.submit.kaggle import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MAYBE_SUBMITTED,
    EXIT_OK,
    CredentialsError,
    Guard,
    KaggleError,
    MaybeSubmittedError,
    Network,
    SubmitInterrupted,
    UploadError,
    failure_reason,
    kaggle_client,
    with_retries,
)

EXIT_CODES = {
    EXIT_OK: "uploaded: the dataset or its new version was created",
    EXIT_FAILED: "failed and nothing was created (safe to run again)",
    EXIT_MAYBE_SUBMITTED: "connection lost while Kaggle created the dataset or version: it may exist",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); the message says what was left",
}
CREATE_CALLS = ("CreateDataset", "CreateDatasetVersion")


@dataclass(frozen=True)
class Uploaded:
    dataset: str
    new: bool  # a new dataset (False: a new version of it)
    url: str
    entries: int  # top-level files and folders sent (each folder as one zip)


def _no_retry(func, *args, **kwargs):
    """Stands in for the client's ``with_retry``: one call, its failure reported to the kit."""
    return func


def dataset_url(dataset: str) -> str:
    return f"https://www.kaggle.com/datasets/{dataset}"


def _error(exc: Exception, action: str, dataset: str, guard: Guard, suffix: str = "") -> KaggleError:
    """The one-line error of a failed dataset call, with whether a retry may help."""
    code = getattr(getattr(exc, "response", None), "status_code", None)
    reason, transient = failure_reason(exc, guard.timeout_s)
    call = guard.calls[-1].name if guard.calls else None
    facts = {"reason": reason, "transient": transient, "call": call}
    if code == 401:
        return CredentialsError(
            f"Kaggle rejected the credentials (HTTP 401) while {action}: check KAGGLE_USERNAME/KAGGLE_KEY or "
            f"kaggle.json (regenerate the token at https://www.kaggle.com/settings/api){suffix}",
            **facts,
        )
    if code == 403:
        message = f"Kaggle refused {action} for '{dataset}' (HTTP 403): is it the account of the credentials?"
    elif code == 404:
        message = f"dataset '{dataset}' not found (HTTP 404) while {action}"
    elif code == 429:
        message = f"Kaggle is rate limiting (HTTP 429) while {action}: try again later"
    elif code is not None:
        message = f"HTTP {code} from Kaggle while {action} for '{dataset}'"
    elif reason == "cannot connect":
        message = f"cannot reach Kaggle while {action}: {type(exc).__name__}"
    elif reason.startswith("no answer"):
        message = f"Kaggle did not answer {call or 'a request'} within {guard.timeout_s:.3g} s while {action}"
    elif reason == "connection dropped":
        message = f"Kaggle dropped the connection during {call or 'a request'} while {action}"
    else:
        message = f"Kaggle call failed while {action}: {type(exc).__name__}"
    return KaggleError(message + suffix, **facts)


def _exists_once(dataset: str, timeout_s: float) -> bool:
    """Whether the dataset exists (GetDatasetStatus: 404 means it does not)."""
    import requests

    guard = Guard(timeout_s)
    with kaggle_client("checking the dataset", dataset, guard) as (api, _):
        try:
            api.dataset_status(dataset)
        except requests.HTTPError as exc:
            if getattr(exc.response, "status_code", None) == 404:
                return False
            raise _error(exc, "checking the dataset", dataset, guard) from None
        except requests.RequestException as exc:
            raise _error(exc, "checking the dataset", dataset, guard) from None
    return True


def _upload_failure(exc: ValueError, dataset: str, guard: Guard) -> KaggleError:
    """The error for the client's ``ValueError``: a file that did not go up (the journal says why), or metadata."""
    text = str(exc)
    if not text.startswith("Upload unsuccessful"):
        return KaggleError(f"the kaggle client refused the bundle for '{dataset}': {text.splitlines()[0]}")
    name = text.split(":", 1)[-1].strip()
    put = guard.last("PUT")
    if put is not None and put.error is not None:
        reason, transient = failure_reason(put.error, guard.timeout_s)
        what = f"the PUT of the file failed ({reason})"
    elif put is not None:
        reason, transient = f"HTTP {put.status}", put.status is not None and put.status >= 500
        what = f"the PUT of the file got HTTP {put.status}"
    else:
        reason, transient, what = "upload failed", False, "no upload was started"
    return UploadError(
        f"upload of {name} to '{dataset}' failed: {what} (nothing was created; safe to run again)",
        reason=reason,
        transient=transient,
        call="PUT",
    )


def _lost_create(exc: Exception, dataset: str, new: bool, guard: Guard) -> KaggleError:
    """The error for a failed create call: refused (nothing created), or its answer lost (it may exist)."""
    create = next(call for name in CREATE_CALLS if (call := guard.last(name)) is not None)
    reason, _ = failure_reason(exc, guard.timeout_s)
    what = "the dataset" if new else "the new version"
    if (create.status is not None and create.status < 500) or reason == "cannot connect":
        return _error(exc, f"creating {what}", dataset, guard, " (nothing was created)")
    check = f"check {dataset_url(dataset)} before uploading again"
    if new:
        try:
            listed = _exists_once(dataset, guard.timeout_s)
            finding = f"Kaggle lists it: do not create it again; {check}" if listed else f"not listed yet; {check}"
        except KaggleError as failure:
            finding = f"checking for it failed too ({failure.reason or failure}); {check}"
    else:
        finding = check
    return MaybeSubmittedError(
        f"lost the answer to {create.name} for '{dataset}' ({reason}): {what} may exist; {finding}",
        reason=reason,
        call=create.name,
    )


def _interrupted(guard: Guard, dataset: str, new: bool) -> SubmitInterrupted:
    what = "the dataset" if new else "the new version"
    create = next((call for name in CREATE_CALLS if (call := guard.last(name)) is not None), None)
    if create is not None and create.status == 200:
        return SubmitInterrupted(f"interrupted: {what} of '{dataset}' was created; see {dataset_url(dataset)}")
    if create is not None:
        return SubmitInterrupted(
            f"interrupted while Kaggle was creating {what} of '{dataset}': it may exist; "
            f"check {dataset_url(dataset)} before uploading again"
        )
    return SubmitInterrupted(f"interrupted while uploading the files of '{dataset}': nothing was created")


def _entries(root: Path) -> list[str]:
    """The top-level files and folders the client must send: all but the Kaggle metadata it reads."""
    return sorted(p.name for p in root.iterdir() if p.name not in (DATASET_METADATA_FILE, KERNEL_METADATA_FILE))


def _count_sent(api, dataset: str, expected: int) -> None:
    """Make the client's ``upload_files`` check that it sent every entry (it skips what it cannot send, quietly)."""
    upload_files = api.upload_files

    def checked(request, *args, **kwargs) -> None:
        upload_files(request, *args, **kwargs)
        sent = len(request.files or [])
        if sent != expected:
            raise KaggleError(
                f"the kaggle client sent {sent} of the {expected} top-level entries of the bundle for '{dataset}' "
                "(a link or special file it skips?); nothing was created"
            )

    api.upload_files = checked


def _create_once(root: Path, dataset: str, new: bool, notes: str, public: bool, timeout_s: float):
    """One attempt: every file (folders as zips), then the create call; returns the client's response."""
    import requests

    guard = Guard(timeout_s)
    action = "uploading the dataset" if new else "uploading a new version"
    try:
        with kaggle_client(action, dataset, guard) as (api, _):
            api.with_retry = _no_retry
            api.MAX_UPLOAD_RESUME_ATTEMPTS = 1  # a failed file fails the attempt; the next attempt resumes it
            _count_sent(api, dataset, len(_entries(root)))
            try:
                if new:
                    response = api.dataset_create_new(str(root), public=public, quiet=True, dir_mode="zip")
                else:
                    response = api.dataset_create_version(str(root), notes, quiet=True, dir_mode="zip")
            except requests.RequestException as exc:
                if any(guard.last(name) is not None for name in CREATE_CALLS):
                    raise _lost_create(exc, dataset, new, guard) from None
                raise _error(exc, action, dataset, guard, " (nothing was created; safe to run again)") from None
            except ValueError as exc:
                raise _upload_failure(exc, dataset, guard) from None
    except KeyboardInterrupt:
        raise _interrupted(guard, dataset, new) from None
    if response is None or str(response.status or "").lower() != "ok" or response.error:
        detail = (response.error or response.status) if response is not None else "no answer"
        raise KaggleError(f"Kaggle refused {'the dataset' if new else 'the new version'} '{dataset}': {detail}")
    return response


def upload_bundle(
    bundle_dir: str | Path, dataset: str, notes: str | None = None, public: bool = False, net: Network | None = None
) -> Uploaded:
    """Create the Kaggle dataset ``USER/SLUG`` from the bundle, or a new version of it when it exists.

    The bundle is checked against its manifest first, and its metadata is pointed at ``dataset``.

    Raises:
        BundleError: a file of the bundle is missing or changed.
        KaggleError: as ``kit submit``: ``UploadError`` (a file did not go up; nothing was created),
            ``MaybeSubmittedError`` (the create call's answer was lost: exit 4), ``SubmitInterrupted`` (exit 130).
    """
    root = Path(bundle_dir)
    manifest = open_bundle(root)
    check_dataset(dataset)
    write_metadata(root, dataset, manifest.competition)
    net = net or Network.from_env()
    notes = notes or f"kit {manifest.kit_version}: {manifest.kind} {Path(manifest.source).name}"
    try:
        new = not with_retries(lambda timeout_s: _exists_once(dataset, timeout_s), net)
        response = with_retries(lambda timeout_s: _create_once(root, dataset, new, notes, public, timeout_s), net)
    except KeyboardInterrupt:  # while waiting to retry
        raise SubmitInterrupted(f"interrupted before '{dataset}' was created: nothing was created") from None
    return Uploaded(dataset, new, response.url or dataset_url(dataset), len(_entries(root)))
