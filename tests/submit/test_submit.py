"""Submission writer and validator, and ``kit submit/submissions/download`` with the real kaggle client against
a loopback Kaggle-compatible server on an ephemeral port (no root needed)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kaggle_server import FakeKaggle, KaggleServer, route_client
from typer.testing import CliRunner

from kit.cli import app
from kit.data import landmarks
from kit.data.landmarks import point_columns, read_test_points
from kit.submit.format import write_submission

runner = CliRunner()
N_POINTS, N_TEST, K = 6, 5, 3


def write_tables(root: Path) -> landmarks.TestPoints:
    """A competition's tables (no images): 4 training rows of 6 points, 5 test rows asking 3 points each."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    header = "\t".join(["file_name", *point_columns(N_POINTS)])
    rows = ["\t".join([f"tr_{i}.jpg", *["10"] * (2 * N_POINTS)]) for i in range(4)]
    (root / "train" / "landmarks.csv").write_text("\n".join([header, *rows]) + "\n")
    lines = ["file_name\tpoint_index_list"] + [f"te_{i}.jpg\t[{i % N_POINTS}, 5, 0]" for i in range(N_TEST)]
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
    with KaggleServer() as state:
        route_client(monkeypatch, state, tmp_path)
        yield state


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _edit(path: Path, line: int, text: str) -> Path:
    lines = _lines(path)
    lines[line] = text
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- writer and validator


def test_writer_writes_floats_not_truncated_ints(data, tmp_path):
    _, test = data
    points = np.full((N_TEST, N_POINTS, 2), 10.75)
    path = write_submission(tmp_path / "f.csv", points, test)
    lines = _lines(path)
    assert lines[0] == ",".join(["file_name", *point_columns(K)])
    assert lines[1].split(",")[1] == "10.7500" and len(lines) == N_TEST + 1


def test_writer_picks_requested_points_in_order(data, tmp_path):
    _, test = data
    points = np.arange(N_TEST * N_POINTS * 2, dtype=float).reshape(N_TEST, N_POINTS, 2)
    path = write_submission(tmp_path / "f.csv", points, test)
    row = [float(v) for v in _lines(path)[2].split(",")[1:]]  # te_1 asks for [1, 5, 0]
    assert row == [*points[1, 1], *points[1, 5], *points[1, 0]]


def test_validate_ok(data, good_csv):
    root, _ = data
    result = runner.invoke(app, ["validate", str(good_csv), "--data", str(root)])
    assert result.exit_code == 0, result.output
    assert f"{N_TEST} rows x {K} points" in result.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: _edit(p, 0, "file_name,Point_M0_X,Point_M0_Y"), "header has 3 columns, expected 7"),
        (lambda p: _edit(p, 0, _lines(p)[0].replace("Point_M1_X", "Point_M1_x")), "header column 4 is 'Point_M1_x'"),
        (lambda p: p.write_text("\n".join(_lines(p)[:-1]) + "\n"), f"{N_TEST - 1} rows, test_points.csv has {N_TEST}"),
        (lambda p: _edit(p, 2, _lines(p)[2].replace("te_1", "te_9")), "line 3: file_name 'te_9.jpg', expected"),
        (lambda p: _edit(p, 3, _lines(p)[3].rsplit(",", 1)[0] + ",inf"), "line 4, column 'Point_M2_Y'"),
        (lambda p: _edit(p, 1, _lines(p)[1].rsplit(",", 1)[0] + ",abc"), "line 2, column 'Point_M2_Y'"),
        (lambda p: _edit(p, 4, _lines(p)[4].rsplit(",", 1)[0] + ","), "missing or not a finite number"),
        (lambda p: _edit(p, 5, _lines(p)[5] + ",1.0"), "line 6 has 8 fields, the header has 7"),
        (lambda p: p.unlink(), "file not found"),
    ],
    ids=[
        "n-columns",
        "column-name",
        "row-count",
        "row-order",
        "infinite",
        "not-a-number",
        "missing",
        "extra-field",
        "no-file",
    ],
)
def test_validate_errors(data, good_csv, edit, message):
    root, _ = data
    edit(good_csv)
    result = runner.invoke(app, ["validate", str(good_csv), "--data", str(root)])
    assert result.exit_code == 1
    assert message in result.stderr and str(good_csv) in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- upload through the real client


def _submit(csv: Path, root: Path, *extra: str):
    args = ["submit", str(csv), "--competition", "facial-landmarks", "--message", "blend v1", "--data", str(root)]
    return runner.invoke(app, [*args, *extra])


def test_submit_uploads_identical_bytes_and_message(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    result = _submit(good_csv, root)
    assert result.exit_code == 0, result.output
    assert kaggle.uploads == {"blob-1": good_csv.read_bytes()}
    assert kaggle.created == [
        {"competitionName": "facial-landmarks", "blobFileTokens": "blob-1", "submissionDescription": "blend v1"}
    ]
    assert kaggle.calls()[:3] == ["POST StartSubmissionUpload", "PUT blob-1", "POST CreateSubmission"]
    assert "ref 4242" in result.output and "status: COMPLETE, public score 8.1234" in result.output
    assert kaggle.key not in result.output


def test_submit_with_wrong_key_is_a_clear_401(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    root, _ = data
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-5f3a9c")
    result = _submit(good_csv, root)
    assert result.exit_code == 1
    assert "rejected the credentials (HTTP 401)" in result.stderr
    assert "wrong-key-5f3a9c" not in result.output and "Traceback" not in result.output
    assert kaggle.uploads == {} and kaggle.created == []


def test_submit_put_failure_is_an_error(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.put_status = 403
    result = _submit(good_csv, root)
    assert result.exit_code == 1
    assert "Could not submit to competition" in result.stderr and "nothing was submitted" in result.stderr
    assert "POST CreateSubmission" not in kaggle.calls()
    assert kaggle.key not in result.output


def test_invalid_file_is_refused_before_any_request(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    _edit(good_csv, 2, _lines(good_csv)[2].replace("te_1", "te_9"))
    result = _submit(good_csv, root)
    assert result.exit_code == 1 and "expected 'te_1.jpg'" in result.stderr
    assert kaggle.requests == []


def test_missing_credentials(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    root, _ = data
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    result = _submit(good_csv, root)
    assert result.exit_code == 1 and "no Kaggle credentials" in result.stderr
    assert "Authentication required" not in result.output  # the client's own help stays captured
    assert kaggle.requests == []


def test_dry_run_validates_and_contacts_nothing(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    result = _submit(good_csv, root, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and kaggle.requests == []


def test_submission_that_fails_scoring_exits_non_zero(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.submission_status = "ERROR"
    result = _submit(good_csv, root)
    assert result.exit_code == 1 and "failed scoring: bad row 3" in result.stderr


def test_http_error_from_the_api(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    root, _ = data
    monkeypatch.setattr(kaggle, "username", "someone-else")  # server now rejects every call with 401
    result = runner.invoke(app, ["submissions", "--competition", "facial-landmarks"])
    assert result.exit_code == 1 and "HTTP 401" in result.stderr


def test_polls_until_scored(kaggle: FakeKaggle, good_csv):
    from kit.submit.kaggle import upload, wait_for_score

    kaggle.pending_polls = 2
    ref, _ = upload(good_csv, "facial-landmarks", "poll me")
    seen = []
    final = wait_for_score("facial-landmarks", ref, timeout_s=10, interval_s=0.01, on_status=seen.append)
    assert [s.status for s in seen] == ["PENDING", "COMPLETE"] and final.public_score == "8.1234"
    assert kaggle.calls().count("POST ListSubmissions") == 3


def test_submit_stops_waiting_after_the_timeout(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.pending_polls = 100
    result = _submit(good_csv, root, "--wait", "0.5")
    assert result.exit_code == 0, result.output
    assert "status: PENDING" in result.output and "not scored after 0.5 s" in result.output


def test_submissions_lists_scores(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    assert _submit(good_csv, root, "--wait", "0").exit_code == 0
    result = runner.invoke(app, ["submissions", "--competition", "facial-landmarks"])
    assert result.exit_code == 0, result.output
    assert "4242" in result.output and "8.1234" in result.output and "blend v1" in result.output


def test_download_unpacks_the_archive(kaggle: FakeKaggle, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train/landmarks.csv", "file_name\tPoint_M0_X\tPoint_M0_Y\na.jpg\t1\t2\n")
        zf.writestr("test/test_points.csv", "file_name\tpoint_index_list\nb.jpg\t[0]\n")
    kaggle.archive = buffer.getvalue()
    out = tmp_path / "downloaded"
    result = runner.invoke(app, ["download", "--competition", "facial-landmarks", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "train" / "landmarks.csv").read_text().startswith("file_name\tPoint_M0_X")
    assert (out / "test" / "test_points.csv").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]  # no archive or temp folder left
    assert "POST DownloadDataFiles" in kaggle.calls()


def test_validator_refuses_a_row_with_an_extra_value(tmp_path):
    from kit.data.landmarks import TestPoints
    from kit.errors import DataError
    from kit.submit.format import validate_submission, write_submission

    test = TestPoints(file_names=np.array(["a.jpg", "b.jpg"]), indices=np.array([[0, 1], [1, 2]]))
    path = write_submission(tmp_path / "s.csv", np.zeros((2, 3, 2)), test)
    lines = path.read_text().splitlines()
    lines[1] += ",7.0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"s\.csv: line 2 has 6 fields, the header has 5"):
        validate_submission(path, test)
