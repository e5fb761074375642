"""``kit bundle upload``: the real kaggle client against the loopback Kaggle, every file sent (folders zipped and
unpacked again), and each server fault ending as ``kit submit``'s do: retried when nothing was created, one line and
the right exit code otherwise."""

from __future__ import annotations

import json
import signal
import time

import pytest
from bundle_helpers import DATASET, fake_bundle
from bundle_helpers import kaggle_fixture as _kaggle  # noqa: F401  (the kaggle fixture)
from kaggle_server import FakeKaggle
from typer.testing import CliRunner

from kit.bundle.manifest import DATASET_METADATA_FILE, KERNEL_METADATA_FILE
from kit.cli import app
from kit.submit.kaggle import EXIT_INTERRUPTED, EXIT_MAYBE_SUBMITTED

runner = CliRunner()
METADATA = (DATASET_METADATA_FILE, KERNEL_METADATA_FILE)  # read by the client, not uploaded


@pytest.fixture
def bundle(tmp_path):
    return fake_bundle(tmp_path / "bundle")


def _upload(bundle, *extra: str, dataset: str = DATASET):
    start = time.monotonic()
    result = runner.invoke(app, ["bundle", "upload", str(bundle), "--dataset", dataset, *extra])
    return result, time.monotonic() - start


def _error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def _sent_as_listed(kaggle: FakeKaggle, bundle, ref: str = DATASET) -> None:
    """The dataset's last version holds every file of the bundle, byte for byte, subfolders included."""
    expected = {
        path.relative_to(bundle).as_posix(): path.read_bytes()
        for path in bundle.rglob("*")
        if path.is_file() and path.name not in METADATA
    }
    assert kaggle.dataset_files(ref) == expected
    assert {"runs/alpha/fold0.safetensors", "runs/beta/fold1.safetensors"} <= set(expected)


def test_upload_creates_a_private_dataset_with_every_file(kaggle: FakeKaggle, bundle):
    result, _ = _upload(bundle)
    assert result.exit_code == 0, result.output
    assert f"created the dataset {DATASET}" in result.stdout
    _sent_as_listed(kaggle, bundle)
    request = kaggle.datasets[DATASET][0]
    assert request["ownerSlug"] == "kit-tester" and request["slug"] == "kit-tiny-bundle"
    assert request["isPrivate"] is True and request["licenseName"] == "other"
    names = sorted(kaggle.blob_names.values())
    assert names == ["WEIGHTS_LICENCE.md", "ensemble.zip", "manifest.json", "predict.py", "runs.zip", "wheels.zip"]
    assert kaggle.key not in result.output


def test_upload_of_an_existing_dataset_is_a_new_version(kaggle: FakeKaggle, bundle):
    assert _upload(bundle)[0].exit_code == 0
    (bundle / "runs" / "alpha" / "pipeline.yaml").write_text("name: alpha\n")  # unchanged bytes: still verifies
    result, _ = _upload(bundle, "--notes", "second fold set")
    assert result.exit_code == 0, result.output
    assert f"created a new version of {DATASET}" in result.stdout
    assert len(kaggle.datasets[DATASET]) == 2
    assert kaggle.datasets[DATASET][1]["body"]["versionNotes"] == "second fold set"
    _sent_as_listed(kaggle, bundle)


def test_upload_points_the_metadata_at_the_dataset(kaggle: FakeKaggle, bundle):
    result, _ = _upload(bundle, dataset="someone/other-bundle")
    assert result.exit_code == 0, result.output
    assert json.loads((bundle / DATASET_METADATA_FILE).read_text())["id"] == "someone/other-bundle"
    kernel = json.loads((bundle / KERNEL_METADATA_FILE).read_text())
    assert kernel["dataset_sources"] == ["someone/other-bundle"] and kernel["enable_internet"] == "false"
    assert kernel["competition_sources"] == ["made-thousand-facial-landmarks"]
    assert "someone/other-bundle" in kaggle.datasets


def test_a_damaged_bundle_is_refused_before_any_request(kaggle: FakeKaggle, bundle):
    (bundle / "runs" / "beta" / "fold1.safetensors").write_bytes(b"\x00")
    result, _ = _upload(bundle)
    assert result.exit_code == 1
    assert "runs/beta/fold1.safetensors: checksum mismatch with manifest.json" in _error_line(result)
    assert kaggle.requests == []


@pytest.mark.parametrize("dataset", ["no-slash", "me/short", "me/Upper-Case-Slug"])
def test_a_bad_dataset_name_is_one_line(kaggle: FakeKaggle, bundle, dataset):
    result, _ = _upload(bundle, dataset=dataset)
    assert result.exit_code == 1 and f"--dataset '{dataset}'" in _error_line(result)
    assert kaggle.requests == []


def test_an_entry_the_client_would_skip_stops_the_upload(kaggle: FakeKaggle, bundle):
    (bundle / "stray").symlink_to(bundle / "nowhere")  # neither file nor folder: the client skips it quietly
    result, _ = _upload(bundle)
    assert result.exit_code == 1, result.output
    assert "the kaggle client sent 6 of the 7 top-level entries of the bundle" in _error_line(result)
    assert kaggle.count("POST CreateDataset") == 0 and kaggle.datasets == {}


def test_wrong_key_is_a_clear_401(kaggle: FakeKaggle, bundle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-5f3a9c")
    result, _ = _upload(bundle)
    assert result.exit_code == 1 and "rejected the credentials (HTTP 401)" in _error_line(result)
    assert "wrong-key-5f3a9c" not in result.output and kaggle.datasets == {}


# ---------------------------------------------------------------- faults


def test_status_502s_are_retried_with_notices(kaggle: FakeKaggle, bundle):
    kaggle.fail_502["GetDatasetStatus"] = 2
    result, _ = _upload(bundle)
    assert result.exit_code == 0, result.output
    assert "Kaggle: GetDatasetStatus failed (HTTP 502), retry 2/3 in 0.02 s" in result.stderr
    _sent_as_listed(kaggle, bundle)


def test_status_that_keeps_failing_gives_up_and_creates_nothing(kaggle: FakeKaggle, bundle):
    kaggle.fail_502["GetDatasetStatus"] = 100
    result, elapsed = _upload(bundle)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert (
        f"HTTP 502 from Kaggle while checking the dataset for '{DATASET}'" in line and "gave up after 4 tries" in line
    )
    assert kaggle.count("POST GetDatasetStatus") == 4 and kaggle.blob_names == {} and elapsed < 5


def test_hanging_status_is_bounded(kaggle: FakeKaggle, bundle, monkeypatch):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "0.5")
    kaggle.hang.add("GetDatasetStatus")
    result, elapsed = _upload(bundle, "--retries", "1")
    assert result.exit_code == 1, result.output
    assert "Kaggle: GetDatasetStatus failed (no answer within 0.5 s), retry 1/1" in result.stderr
    assert "Kaggle did not answer GetDatasetStatus within 0.5 s" in _error_line(result)
    assert elapsed < 4


def test_a_502_on_a_file_upload_start_retries_the_attempt(kaggle: FakeKaggle, bundle):
    kaggle.fail_502["StartBlobUpload"] = 1
    result, _ = _upload(bundle)
    assert result.exit_code == 0, result.output
    assert "Kaggle: StartBlobUpload failed (HTTP 502), retry 1/3" in result.stderr
    assert kaggle.count("POST CreateDataset") == 1
    _sent_as_listed(kaggle, bundle)


def test_a_failed_put_is_retried_and_resumed(kaggle: FakeKaggle, bundle):
    kaggle.fail_502["PUT"] = 1
    result, _ = _upload(bundle)
    assert result.exit_code == 0, result.output
    assert "Kaggle: PUT failed (HTTP 502), retry 1/3" in result.stderr
    assert kaggle.count("POST CreateDataset") == 1
    _sent_as_listed(kaggle, bundle)


def test_a_file_whose_put_failed_is_resumed_not_restarted(kaggle: FakeKaggle, tmp_path):
    bundle = fake_bundle(tmp_path / "flat", folders=False)  # files only: the first PUT is of a file, not a zip
    kaggle.fail_502["PUT"] = 1
    result, _ = _upload(bundle)
    assert result.exit_code == 0, result.output
    probes = [
        r for r in kaggle.requests if r.method == "PUT" and r.headers.get("Content-Range", "").startswith("bytes */")
    ]
    assert len(probes) == 1 and probes[0].path == "/upload/dblob-1"  # the next attempt asked what had arrived
    assert kaggle.count("POST StartBlobUpload") == 3  # one session per file: the failed one was resumed
    assert kaggle.dataset_files(DATASET) == {p.name: p.read_bytes() for p in bundle.iterdir() if p.name not in METADATA}


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_a_put_that_keeps_failing_ends_with_nothing_created(kaggle: FakeKaggle, bundle, monkeypatch, fault):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "0.5")
    getattr(kaggle, fault).add("PUT")
    result, elapsed = _upload(bundle, "--retries", "1")
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    reason = "connection dropped" if fault == "drop" else "no answer within 0.5 s"
    assert f"the PUT of the file failed ({reason})" in line and "nothing was created; safe to run again" in line
    assert "gave up after 2 tries" in line
    assert kaggle.count("POST CreateDataset") == 0 and kaggle.datasets == {}
    assert elapsed < 8


def test_a_refused_put_is_not_retried(kaggle: FakeKaggle, bundle):
    kaggle.put_status = 403
    result, _ = _upload(bundle)
    assert result.exit_code == 1, result.output
    assert "the PUT of the file got HTTP 403" in _error_line(result) and "retry" not in result.stderr
    assert kaggle.count("PUT " + next(iter(kaggle.blob_names))) == 1 and kaggle.datasets == {}


def test_connection_lost_after_create_exits_4_and_checks_once(kaggle: FakeKaggle, bundle):
    kaggle.drop.add("CreateDataset")
    result, elapsed = _upload(bundle)
    assert result.exit_code == EXIT_MAYBE_SUBMITTED == 4, result.output
    line = _error_line(result)
    assert f"lost the answer to CreateDataset for '{DATASET}' (connection dropped): the dataset may exist" in line
    assert "Kaggle lists it: do not create it again" in line
    assert kaggle.count("POST CreateDataset") == 1 and kaggle.calls()[-1] == "POST GetDatasetStatus"
    assert elapsed < 4


def test_a_version_502_is_not_retried_and_says_it_may_exist(kaggle: FakeKaggle, bundle):
    assert _upload(bundle)[0].exit_code == 0
    kaggle.fail_502["CreateDatasetVersion"] = 1
    result, _ = _upload(bundle)
    assert result.exit_code == EXIT_MAYBE_SUBMITTED, result.output
    line = _error_line(result)
    assert "lost the answer to CreateDatasetVersion" in line and "(HTTP 502): the new version may exist" in line
    assert kaggle.count("POST CreateDatasetVersion") == 1 and "retry" not in result.stderr


@pytest.fixture
def python_sigint_handler():
    """A background shell job ignores SIGINT and Python then installs no handler: give the test the interactive one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("route", "says"),
    [
        ("StartBlobUpload", "while uploading the files of 'kit-tester/kit-tiny-bundle': nothing was created"),
        ("PUT", "nothing was created"),
        ("CreateDataset", "while Kaggle was creating the dataset of 'kit-tester/kit-tiny-bundle': it may exist"),
    ],
)
@pytest.mark.usefixtures("python_sigint_handler")
def test_ctrl_c_says_what_was_left_and_exits_130(kaggle: FakeKaggle, bundle, route, says):
    kaggle.interrupt.add(route)
    result, _ = _upload(bundle)
    assert result.exit_code == EXIT_INTERRUPTED == 130, result.output
    line = _error_line(result)
    assert line.startswith("error: interrupted") and says in line
    assert kaggle.count("POST CreateDataset") == (route == "CreateDataset")


def test_upload_help_documents_the_exit_codes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(runner.invoke(app, ["bundle", "upload", "--help"]).output.split())
    assert "4: connection lost while Kaggle created the dataset or version: it may exist" in text
