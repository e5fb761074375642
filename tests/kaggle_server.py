"""A loopback Kaggle-compatible server for the real kaggle client (kaggle 2.x over kagglesdk).

The client POSTs JSON to ``/api/v1/<service>/<method>``; an upload is StartSubmissionUpload (returns a
``createUrl``), a PUT of the file to that URL, then CreateSubmission. The server binds an ephemeral port on
127.0.0.1, so it runs without root; ``route_client`` points the client's LOCALHOST environment at it.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/api/v1/competitions.CompetitionApiService/"


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
    archive: bytes = b""  # served by DownloadDataFiles
    requests: list[Recorded] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    created: list[dict] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self) -> list[str]:
        return [f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in self.requests]


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

        def do_POST(self) -> None:  # noqa: N802
            body = self._record()
            if not self._authorised():
                self._json(401, {"code": 401, "message": "Unauthenticated"})
                return
            request = json.loads(body or b"{}")
            method = self.path.removeprefix(API)
            if method == "StartSubmissionUpload":
                token = f"blob-{len(state.uploads) + 1}"
                self._json(200, {"token": token, "createUrl": f"{state.url}/upload/{token}"})
            elif method == "CreateSubmission":
                state.created.append(request)
                self._json(200, {"message": "Successfully submitted", "ref": 4242})
            elif method == "ListSubmissions":
                status = state.submission_status if state.pending_polls <= 0 else "PENDING"
                state.pending_polls -= 1
                subs = [
                    {
                        "ref": 4242,
                        "date": "2024-05-01T10:00:00.000Z",
                        "description": c.get("submissionDescription", ""),
                        "fileName": "blend.csv",
                        "status": status,
                        "publicScore": state.public_score if status == "COMPLETE" else "",
                        "errorDescription": "bad row 3" if status == "ERROR" else "",
                    }
                    for c in state.created
                ]
                self._json(200, {"submissions": subs})
            elif method == "DownloadDataFiles":
                slug = request["competitionName"]
                self._send(302, b"", extra={"Location": f"{state.url}/files/{slug}.zip"})
            else:
                self._json(404, {"code": 404, "message": f"no method {method}"})

        def do_PUT(self) -> None:  # noqa: N802
            body = self._record()
            token = self.path.rsplit("/", 1)[-1]
            if state.put_status in (200, 201):
                state.uploads[token] = body
            self._send(state.put_status, b"{}")

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            if self.path.startswith("/files/"):
                self._send(200, state.archive, "application/zip")
            else:
                self._send(404, b"")

    return Handler


class KaggleServer:
    """Run a FakeKaggle on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, state: FakeKaggle | None = None):
        self.state = state or FakeKaggle()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.state.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeKaggle:
        self._thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


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
