"""Submission writer and validator, and ``kit submit/submissions/download`` with the real kaggle client against
a loopback Kaggle-compatible server on an ephemeral port (no root needed)."""

from __future__ import annotations

import io
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kaggle_server import FakeKaggle
from typer.testing import CliRunner

from kit.cli import app
from kit.data.landmarks import point_columns
from kit.submit.format import write_submission
from kit.submit.kaggle import EXIT_CODES, EXIT_INTERRUPTED, EXIT_MAYBE_SUBMITTED, EXIT_POLL_FAILED

runner = CliRunner()
N_POINTS, N_TEST, K = 6, 5, 3  # as conftest.write_tables writes them


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


def _timed_submit(csv: Path, root: Path, *extra: str):
    start = time.monotonic()
    result = _submit(csv, root, *extra)
    return result, time.monotonic() - start


def _error_line(result) -> str:
    """The one ``error:`` line on stderr (there must be exactly one, and no traceback)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


# ---------------------------------------------------------------- Kaggle faults, built for real in the server


def test_poll_502s_are_retried_with_notices(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.fail_502["ListSubmissions"] = 2
    result = _submit(good_csv, root)
    assert result.exit_code == 0, result.output
    assert "Kaggle: ListSubmissions failed (HTTP 502), retry 1/3 in 0.01 s" in result.stderr
    assert "Kaggle: ListSubmissions failed (HTTP 502), retry 2/3 in 0.02 s" in result.stderr
    assert "status: COMPLETE, public score 8.1234" in result.stdout
    assert kaggle.count("POST CreateSubmission") == 1 and kaggle.count("POST ListSubmissions") == 3


def test_polling_that_keeps_failing_exits_3_with_the_ref(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.fail_502["ListSubmissions"] = 100
    result, elapsed = _timed_submit(good_csv, root)
    assert result.exit_code == EXIT_POLL_FAILED == 3, result.output
    line = _error_line(result)
    assert "submission 4242 to 'facial-landmarks' was created, but polling its status failed" in line
    assert "HTTP 502" in line and "gave up after 4 tries" in line
    assert "kit submissions --competition facial-landmarks" in line and "do not resubmit" in line
    assert kaggle.count("POST ListSubmissions") == 4 and kaggle.count("POST CreateSubmission") == 1
    assert elapsed < 5


def test_wait_bounds_polling_against_a_hanging_server(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    root, _ = data
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "30")  # --wait, not the per-call timeout, must end this
    kaggle.hang.add("ListSubmissions")
    result, elapsed = _timed_submit(good_csv, root, "--wait", "1.5")
    assert result.exit_code == EXIT_POLL_FAILED, result.output
    line = _error_line(result)
    assert "submission 4242" in line and "Kaggle did not answer ListSubmissions within 1.5 s" in line
    assert elapsed < 5


def test_hanging_start_times_out_and_is_not_retried(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    root, _ = data
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "1")
    kaggle.hang.add("StartSubmissionUpload")
    result, elapsed = _timed_submit(good_csv, root)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert "Kaggle did not answer StartSubmissionUpload within 1 s" in line and "nothing was submitted" in line
    assert kaggle.calls() == ["POST StartSubmissionUpload"]
    assert elapsed < 4


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_failed_put_ends_at_once_with_one_line(kaggle: FakeKaggle, data, good_csv, monkeypatch, fault):
    root, _ = data
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "1")
    getattr(kaggle, fault).add("PUT")
    result, elapsed = _timed_submit(good_csv, root)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    reason = "connection dropped" if fault == "drop" else "no answer within 1 s"
    assert f"the PUT of the file failed ({reason})" in line and "nothing was submitted" in line
    assert kaggle.calls() == ["POST StartSubmissionUpload", "PUT blob-1"]  # no hidden urllib3 retries
    assert kaggle.created == [] and elapsed < 4


def test_connection_lost_after_create_exits_4_and_checks_the_listing(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.drop.add("CreateSubmission")
    result, elapsed = _timed_submit(good_csv, root)
    assert result.exit_code == EXIT_MAYBE_SUBMITTED == 4, result.output
    line = _error_line(result)
    assert "lost the answer to CreateSubmission for 'facial-landmarks' (connection dropped)" in line
    assert "the submission may exist" in line and "Kaggle lists it as submission 4242 (COMPLETE" in line
    assert "do not resubmit" in line and "kit submissions --competition facial-landmarks" in line
    assert "cannot reach Kaggle" not in line
    assert kaggle.calls()[2:] == ["POST CreateSubmission", "POST ListSubmissions"]  # one check, no retry
    assert elapsed < 4


def test_create_502_is_not_retried_and_says_it_may_exist(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.fail_502["CreateSubmission"] = 1
    result = _submit(good_csv, root)
    assert result.exit_code == EXIT_MAYBE_SUBMITTED, result.output
    line = _error_line(result)
    assert "(HTTP 502): the submission may exist" in line and "not among the latest submissions yet" in line
    assert kaggle.count("POST CreateSubmission") == 1 and kaggle.count("POST ListSubmissions") == 1


def test_lost_create_with_a_failing_listing_still_exits_4(kaggle: FakeKaggle, data, good_csv):
    root, _ = data
    kaggle.drop.add("CreateSubmission")
    kaggle.fail_502["ListSubmissions"] = 100
    result = _submit(good_csv, root)
    assert result.exit_code == EXIT_MAYBE_SUBMITTED, result.output
    line = _error_line(result)
    assert "may exist" in line and "listing submissions to check failed too (HTTP 502)" in line
    assert kaggle.count("POST ListSubmissions") == 1 and "retry" not in result.stderr


@pytest.mark.parametrize(("fails", "code"), [(2, 0), (100, 1)])
def test_submissions_retries_502s_then_gives_up(kaggle: FakeKaggle, fails, code):
    kaggle.fail_502["ListSubmissions"] = fails
    start = time.monotonic()
    result = runner.invoke(app, ["submissions", "--competition", "facial-landmarks", "--retries", "2"])
    assert result.exit_code == code, result.output
    assert "Kaggle: ListSubmissions failed (HTTP 502), retry 2/2 in 0.02 s" in result.stderr
    if code:
        assert "HTTP 502 from Kaggle while listing submissions" in _error_line(result)
        assert "gave up after 3 tries" in result.stderr
    else:
        assert "no submissions to 'facial-landmarks'" in result.stdout
    assert kaggle.count("POST ListSubmissions") == 3 and time.monotonic() - start < 4


def test_hanging_listing_is_bounded(kaggle: FakeKaggle, monkeypatch):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "0.5")
    kaggle.hang.add("ListSubmissions")
    start = time.monotonic()
    result = runner.invoke(app, ["submissions", "--competition", "facial-landmarks", "--retries", "1"])
    assert result.exit_code == 1, result.output
    assert "Kaggle: ListSubmissions failed (no answer within 0.5 s), retry 1/1" in result.stderr
    assert "Kaggle did not answer ListSubmissions within 0.5 s" in _error_line(result)
    assert time.monotonic() - start < 4


def test_download_retries_a_502_on_the_call_and_on_the_file(kaggle: FakeKaggle, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train/landmarks.csv", "file_name\tPoint_M0_X\tPoint_M0_Y\na.jpg\t1\t2\n")
    kaggle.archive = buffer.getvalue()
    kaggle.fail_502.update({"DownloadDataFiles": 1, "GET": 1})
    out = tmp_path / "downloaded"
    result = runner.invoke(app, ["download", "--competition", "facial-landmarks", str(out)])
    assert result.exit_code == 0, result.output
    assert "Kaggle: DownloadDataFiles failed (HTTP 502), retry 1/3" in result.stderr
    assert "Kaggle: GET facial-landmarks.zip failed (HTTP 502), retry 2/3" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train"]


def test_ctrl_c_while_polling_names_the_ref_and_exits_130(kaggle: FakeKaggle, data, good_csv, monkeypatch):
    import kit.submit.kaggle

    def ctrl_c(_seconds: float) -> None:
        raise KeyboardInterrupt

    root, _ = data
    kaggle.pending_polls = 5
    monkeypatch.setattr(kit.submit.kaggle, "_sleep", ctrl_c)
    result = _submit(good_csv, root)
    assert result.exit_code == EXIT_INTERRUPTED == 130, result.output
    line = _error_line(result)
    assert "interrupted: submission 4242 to 'facial-landmarks' was created; polling stopped" in line
    assert "kit submissions --competition facial-landmarks" in line


@pytest.fixture
def python_sigint_handler():
    """A shell starts background jobs with SIGINT ignored, and Python then installs no handler, so a simulated Ctrl-C
    would do nothing: give the test process the handler an interactive kit has."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("route", "says"),
    [
        ("StartSubmissionUpload", "before the file was uploaded to 'facial-landmarks': nothing was submitted"),
        ("PUT", "no submission was created (nothing was submitted)"),
        ("CreateSubmission", "kit submissions --competition facial-landmarks"),
    ],
)
@pytest.mark.usefixtures("python_sigint_handler")
def test_ctrl_c_during_the_upload_says_what_was_left(kaggle: FakeKaggle, data, good_csv, route, says):
    root, _ = data
    kaggle.interrupt.add(route)  # a real SIGINT-like interrupt of the client's main thread
    result = _submit(good_csv, root)
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    line = _error_line(result)
    assert line.startswith("error: interrupted") and says in line
    if route != "CreateSubmission":
        assert kaggle.created == []


def test_bad_timeout_setting_is_a_one_line_error(kaggle: FakeKaggle, monkeypatch):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "soon")
    result = runner.invoke(app, ["submissions", "--competition", "facial-landmarks"])
    assert result.exit_code == 1 and "KIT_KAGGLE_TIMEOUT must be a number" in _error_line(result)
    assert kaggle.requests == []


def test_submit_help_documents_the_exit_codes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["submit", "--help"])
    text = " ".join(result.output.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code}: {meaning}" in text


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
