"""A loopback Kaggle-compatible server for the real kaggle client (kaggle 2.x over kagglesdk).

The client POSTs JSON to ``/api/v1/<service>/<method>``; an upload is StartSubmissionUpload (returns a
``createUrl``), a PUT of the file to that URL, then CreateSubmission; the n-th submission gets ref 4241 + n. The
server binds an ephemeral port on 127.0.0.1, so it runs without root; ``route_client`` points the client's LOCALHOST
environment at it.

Datasets (``kit bundle upload``): GetDatasetStatus (404 for an unknown dataset), StartBlobUpload (a ``createUrl``
per file, which the file is PUT to; a PUT with ``Content-Range: bytes */N`` asks how much arrived, answered 200 when
all of it did, else 308, as a resumable upload is), then CreateDataset or CreateDatasetVersion naming the blob
tokens. ``dataset_files(ref)`` gives what a dataset's last version received, zip archives of folders unpacked.

Faults are built for real, per route (an API method name, ``PUT`` for the upload, ``GET`` for the data file):
``fail_502`` answers 502 a number of times before working, ``hang`` holds the request without answering (until
``hang_s`` passes or the server shuts down), ``drop`` closes the connection without an answer (the create calls
create first), and ``interrupt`` delivers a simulated Ctrl-C to the client's main thread.
"""

from __future__ import annotations

import _thread
import base64
import io
import json
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/api/v1/"
CREATING = ("CreateSubmission", "CreateDataset", "CreateDatasetVersion")  # routes that drop only after creating


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes


@dataclass
class FakeKaggle:
    """Behaviour knobs and everything the server received."""

    username: str = "kit-tester"
    key: str = "0123456789abcdef0123456789abcdef"
    put_status: int = 200  # status of the upload PUT
    submission_status: str = "COMPLETE"  # once scored
    pending_polls: int = 0  # how many listings show the submission PENDING before it is scored
    public_score: str = "8.1234"
    public_scores: list[str] = field(default_factory=list)  # per submission, in order (default: public_score)
    private_score: str = ""  # shown once revealed
    archive: bytes = b""  # served by DownloadDataFiles
    fail_502: dict[str, int] = field(default_factory=dict)  # route -> how many 502s before it works
    hang: set[str] = field(default_factory=set)  # routes held without an answer
    hang_s: float = 30.0  # how long a held request waits (cut short when the server shuts down)
    drop: set[str] = field(default_factory=set)  # routes whose connection is closed without an answer
    interrupt: set[str] = field(default_factory=set)  # routes that Ctrl-C the client (once each) before answering
    requests: list[Recorded] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    file_names: dict[str, str] = field(default_factory=dict)  # upload token -> file name given at the start
    created: list[dict] = field(default_factory=list)
    created_at: list[str] = field(default_factory=list)
    datasets: dict[str, list[dict]] = field(default_factory=dict)  # "owner/slug" -> its versions' create requests
    blob_names: dict[str, str] = field(default_factory=dict)  # dataset upload token -> file name given at the start
    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)  # set at shutdown: held requests end

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def score(self, i: int) -> str:
        """The public score of the ``i``-th submission."""
        return self.public_scores[i] if i < len(self.public_scores) else self.public_score

    def calls(self) -> list[str]:
        return [f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in self.requests]

    def count(self, call: str) -> int:
        """How many requests ``call`` (as in ``calls()``, e.g. ``"POST ListSubmissions"``) the server received."""
        return self.calls().count(call)

    def dataset_files(self, ref: str, version: int = -1) -> dict[str, bytes]:
        """The files a version of dataset ``ref`` received, by path: a zip archive ``NAME.zip`` of a folder is unpacked
        into ``NAME/...`` (as Kaggle unpacks it)."""
        request = self.datasets[ref][version]
        tokens = [f["token"] for f in (request.get("body") or request).get("files", [])]
        files = {}
        for token in tokens:
            name, data = self.blob_names[token], self.uploads[token]
            if name.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for member in archive.infolist():
                        if not member.is_dir():
                            files[f"{name.removesuffix('.zip')}/{member.filename}"] = archive.read(member)
            else:
                files[name] = data
        return files


DATASET_ROUTES = ("GetDatasetStatus", "StartBlobUpload", "CreateDataset", "CreateDatasetVersion")


def _handler(state: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: bytes, content_type: str = "application/json", extra=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode())

        def _authorised(self) -> bool:
            expected = base64.b64encode(f"{state.username}:{state.key}".encode()).decode()
            return self.headers.get("Authorization") == f"Basic {expected}"

        def _record(self) -> bytes:
            body = self._body()
            state.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            return body

        def _drop(self) -> None:
            """Close the connection without an answer."""
            self.close_connection = True
            self.wfile.flush()

        def _fault(self, route: str) -> bool:
            """Apply the faults set for ``route``; True when the request was handled (dropped, held, or 502)."""
            if route in state.interrupt:
                state.interrupt.discard(route)
                _thread.interrupt_main()  # the client sees KeyboardInterrupt once this request returns
            if route in state.hang:
                state.release.wait(state.hang_s)
                self._drop()
                return True
            if state.fail_502.get(route, 0) > 0:
                state.fail_502[route] -= 1
                self._send(502, b"<html>Bad Gateway</html>", "text/html")
                return True
            if route in state.drop and route not in CREATING:  # those create first, then drop
                self._drop()
                return True
            return False

        def do_POST(self) -> None:  # noqa: N802
            body = self._record()
            if not self._authorised():
                self._json(401, {"code": 401, "message": "Unauthenticated"})
                return
            request = json.loads(body or b"{}")
            method = self.path.rsplit("/", 1)[-1] if self.path.startswith(API) else self.path
            if self._fault(method):
                return
            if method in DATASET_ROUTES:
                self._dataset(method, request)
                return
            if method == "StartSubmissionUpload":
                token = f"blob-{len(state.file_names) + 1}"
                state.file_names[token] = request.get("fileName", "")
                self._json(200, {"token": token, "createUrl": f"{state.url}/upload/{token}"})
            elif method == "CreateSubmission":
                state.created.append(request)
                state.created_at.append(datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
                if method in state.drop:
                    self._drop()
                    return
                self._json(200, {"message": "Successfully submitted", "ref": 4241 + len(state.created)})
            elif method == "ListSubmissions":
                status = state.submission_status if state.pending_polls <= 0 else "PENDING"
                state.pending_polls -= 1
                subs = [
                    {
                        "ref": 4242 + i,
                        "date": date,
                        "description": c.get("submissionDescription", ""),
                        "fileName": state.file_names.get(c.get("blobFileTokens", ""), ""),
                        "status": status,
                        "publicScore": state.score(i) if status == "COMPLETE" else "",
                        "privateScore": state.private_score if status == "COMPLETE" else "",
                        "errorDescription": "bad row 3" if status == "ERROR" else "",
                    }
                    for i, (c, date) in enumerate(zip(state.created, state.created_at, strict=True))
                ]
                self._json(200, {"submissions": subs})
            elif method == "DownloadDataFiles":
                slug = request["competitionName"]
                self._send(302, b"", extra={"Location": f"{state.url}/files/{slug}.zip"})
            else:
                self._json(404, {"code": 404, "message": f"no method {method}"})

        def _dataset(self, method: str, request: dict) -> None:
            """The dataset routes (``kit bundle upload``)."""
            if method == "GetDatasetStatus":
                ref = f"{request.get('ownerSlug')}/{request.get('datasetSlug')}"
                if ref in state.datasets:
                    self._json(200, {"status": "READY"})
                else:
                    self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
            elif method == "StartBlobUpload":
                token = f"dblob-{len(state.blob_names) + 1}"
                state.blob_names[token] = request.get("name", "")
                self._json(200, {"token": token, "createUrl": f"{state.url}/upload/{token}"})
            elif method == "CreateDataset":
                ref = f"{request.get('ownerSlug')}/{request.get('slug')}"
                state.datasets.setdefault(ref, []).append(request)
                if method in state.drop:
                    self._drop()
                    return
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"})
            else:  # CreateDatasetVersion
                ref = f"{request.get('ownerSlug')}/{request.get('datasetSlug')}"
                if ref not in state.datasets:
                    self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
                    return
                state.datasets[ref].append(request)
                if method in state.drop:
                    self._drop()
                    return
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"})

        def do_PUT(self) -> None:  # noqa: N802
            body = self._record()
            if self._fault("PUT"):
                return
            token = self.path.rsplit("/", 1)[-1]
            probe = self.headers.get("Content-Range", "")
            if probe.startswith("bytes */"):  # a resumable upload asks how much arrived: all of it, or nothing
                whole = token in state.uploads and len(state.uploads[token]) == int(probe.removeprefix("bytes */"))
                self._send(200 if whole else 308, b"{}")
                return
            if state.put_status in (200, 201):
                state.uploads[token] = body
            self._send(state.put_status, b"{}")

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            if self._fault("GET"):
                return
            if self.path.startswith("/files/"):
                self._send(200, state.archive, "application/zip")
            else:
                self._send(404, b"")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request (the Ctrl-C tests do it on purpose) is not the server's error: without this,
    socketserver prints a traceback on stderr, where the CLI test that caused it may still be capturing."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class KaggleServer:
    """Run a FakeKaggle on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, state: FakeKaggle | None = None):
        self.state = state or FakeKaggle()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self.state))
        self.state.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeKaggle:
        self._thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self.state.release.set()  # held requests end now, so closing (which joins their threads) is quick
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        """Whether the serving thread still runs (False once the context has exited)."""
        return self._thread.is_alive()


def route_client(monkeypatch, state: FakeKaggle, tmp_path, credentials: bool = True) -> None:
    """Point the kaggle client at ``state`` and isolate it from the user's own credentials and proxies."""
    from kagglesdk import kaggle_env

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, state.url)
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "VERBOSE",
        "VERBOSE_OUTPUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    if credentials:
        monkeypatch.setenv("KAGGLE_USERNAME", state.username)
        monkeypatch.setenv("KAGGLE_KEY", state.key)
