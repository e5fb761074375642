"""Helpers of the bundle tests: a small bundle written without training (for the manifest and upload tests), the real
kaggle client routed to the loopback server."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from kaggle_server import KaggleServer, route_client

import kit
from kit.bundle.manifest import Manifest, list_files, write_manifest
from kit.bundle.metadata import write_metadata

DATASET = "kit-tester/kit-tiny-bundle"


def fake_bundle(root: Path, folders: bool = True) -> Path:
    """A bundle's layout and manifest with stand-in contents: top-level files, and (``folders``) folders two levels
    deep."""
    files = {
        "predict.py": b"print('stand-in')\n",
        "WEIGHTS_LICENCE.md": b"# licence\n",
        "runs/alpha/pipeline.yaml": b"name: alpha\n",
        "runs/alpha/fold0.safetensors": bytes(range(256)) * 40,
        "runs/beta/fold1.safetensors": b"\x00\x01" * 3000,
        "wheels/kit-0.1.0-py3-none-any.whl": b"PK stand-in wheel",
        "ensemble/s.json": b"{}\n",
    }
    for rel, data in files.items():
        if "/" in rel and not folders:
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    write_metadata(root, DATASET, "made-thousand-facial-landmarks")
    manifest = Manifest(
        kit_version=kit.__version__,
        created="2026-01-01T00:00:00+00:00",
        kind="run",
        source="/nowhere/alpha",
        runs=(),
        competition="made-thousand-facial-landmarks",
        python="3.11.0",
        kit_wheel="wheels/kit-0.1.0-py3-none-any.whl",
        assumes={"numpy": "2.0.0"},
        files=list_files(root),
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture(name="kaggle")
def kaggle_fixture(monkeypatch, tmp_path):
    """The real kaggle client talking to a loopback Kaggle (as ``tests/submit``'s fixture), fast timeouts."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "2")
    monkeypatch.setenv("KIT_KAGGLE_BACKOFF", "0.01")
    monkeypatch.delenv("KIT_KAGGLE_RETRIES", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the client's zips and resumable-upload state
    import requests

    send = requests.Session.send
    server = KaggleServer()
    with server as state:
        route_client(monkeypatch, state, tmp_path)
        yield state
    assert not server.alive, "the loopback server did not shut down"
    assert requests.Session.send is send, "the kit left requests patched"
