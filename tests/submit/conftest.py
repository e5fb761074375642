"""Fixtures of the submission tests: a competition's tables (no images), a valid submission, and the real kaggle
client routed to a loopback Kaggle-compatible server on an ephemeral port (no root needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kaggle_server import KaggleServer, route_client

from kit.data import landmarks
from kit.data.landmarks import point_columns, read_test_points
from kit.submit.format import write_submission

N_POINTS, N_TEST, K = 6, 5, 3


def write_tables(root: Path) -> landmarks.TestPoints:
    """A competition's tables (no images): 4 training rows of 6 points, 5 test rows asking 3 points each."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    header = "\t".join(["file_name", *point_columns(N_POINTS)])
    rows = ["\t".join([f"tr_{i}.jpg", *["10"] * (2 * N_POINTS)]) for i in range(4)]
    (root / "train" / "landmarks.csv").write_text("\n".join([header, *rows]) + "\n")
    lines = ["file_name\tpoint_index_list"] + [f"te_{i}.jpg\t[{i % 4 or 4}, 5, 0]" for i in range(N_TEST)]
    (root / "test" / "test_points.csv").write_text("\n".join(lines) + "\n")
    return read_test_points(root / "test" / "test_points.csv", N_POINTS)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "comp"
    return root, write_tables(root)


@pytest.fixture
def good_csv(data, tmp_path):
    _, test = data
    points = np.random.default_rng(0).uniform(0, 100, size=(N_TEST, N_POINTS, 2))
    return write_submission(tmp_path / "sub.csv", points, test)


@pytest.fixture
def kaggle(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "2")  # the faults below must end in seconds, not minutes
    monkeypatch.setenv("KIT_KAGGLE_BACKOFF", "0.01")
    monkeypatch.delenv("KIT_KAGGLE_RETRIES", raising=False)
    import requests

    send = requests.Session.send
    server = KaggleServer()
    with server as state:
        route_client(monkeypatch, state, tmp_path)
        yield state
    assert not server.alive, "the loopback server did not shut down"
    assert requests.Session.send is send, "the kit left requests patched"
