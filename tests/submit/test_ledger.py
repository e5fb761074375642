"""The submission ledger and ``kit lb``, with the real kaggle client against the loopback Kaggle server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ensemble_records import fake_record
from kaggle_server import FakeKaggle
from typer.testing import CliRunner

from kit.cli import app
from kit.io import file_sha256
from kit.submit.format import write_submission
from kit.submit.leaderboard import cv_vs_lb, outliers
from kit.submit.ledger import Ledger

runner = CliRunner()
SLUG = "facial-landmarks"


def blend_csv(folder: Path, name: str, test, cv_mse: float, seed: int = 0, kind: str | None = None) -> Path:
    """A submission NAME.csv with its record NAME.json beside it, as ``kit blend`` / ``kit stack`` write them."""
    folder.mkdir(parents=True, exist_ok=True)
    points = np.random.default_rng(seed).uniform(0, 100, size=(len(test.file_names), 6, 2))
    csv = write_submission(folder / f"{name}.csv", points, test)
    runs = {"reg": folder / "runs" / "reg", "hm": folder / "runs" / "hm"}
    fake_record(folder / f"{name}.json", runs, kind or "blend", (cv_mse, cv_mse / 3, 0.0), 6, file_sha256(csv))
    return csv


def submit(csv: Path, root: Path, *extra: str, message: str = "blend v1"):
    args = ["submit", str(csv), "--competition", SLUG, "--message", message, "--data", str(root), "--poll", "1"]
    return runner.invoke(app, [*args, *extra])


def test_upload_is_recorded_with_source_cv_and_score(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "best", test, cv_mse=8.0)
    result = submit(csv, root)
    assert result.exit_code == 0, result.output
    [entry] = Ledger(csv.parent).read()
    assert (entry.state, entry.ref, entry.status, entry.public_score) == ("submitted", 4242, "COMPLETE", 8.1234)
    assert entry.sha256 == file_sha256(csv) and entry.message == "blend v1" and entry.competition == SLUG
    assert (entry.source.kind, entry.source.name, entry.source.cv_mse) == ("blend", "best", 8.0)
    assert entry.source.cv_nme == pytest.approx(8.0 / 3) and entry.source.runs == ("reg", "hm")
    assert entry.source.cv_kind == "nested CV" and entry.scored is not None
    assert f"ledger: #1 in {csv.parent / 'ledger.jsonl'} (blend best, nested CV MSE 8.0000" in result.output


def test_score_filled_in_when_kit_submissions_polls(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "stk", test, cv_mse=7.5, kind="stack")
    kaggle.pending_polls = 1
    assert submit(csv, root, "--wait", "0").exit_code == 0
    [entry] = Ledger(csv.parent).read()
    assert entry.state == "submitted" and entry.ref == 4242 and entry.public_score is None
    assert entry.source.kind == "stack" and entry.source.cv_mse == 7.5

    subs = ["--competition", SLUG, "--submissions", str(csv.parent)]
    assert runner.invoke(app, ["submissions", *subs]).exit_code == 0  # still PENDING
    assert Ledger(csv.parent).read()[0].status == "PENDING"
    kaggle.private_score = "8.4"
    result = runner.invoke(app, ["submissions", *subs, "--local"])
    assert result.exit_code == 0, result.output
    [entry] = Ledger(csv.parent).read()
    assert (entry.status, entry.public_score, entry.private_score) == ("COMPLETE", 8.1234, 8.4)
    assert "stack stk" in result.output and "7.5000" in result.output and "8.1234" in result.output


def test_failed_upload_leaves_no_row(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "best", test, cv_mse=8.0)
    kaggle.put_status = 403
    result = submit(csv, root)
    assert result.exit_code == 1 and "nothing was submitted" in result.stderr
    assert Ledger(csv.parent).read() == []


def test_lost_create_answer_is_recorded_as_maybe_and_adopted_by_the_listing(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "best", test, cv_mse=8.0)
    kaggle.drop.add("CreateSubmission")
    result = submit(csv, root)
    assert result.exit_code == 4, result.output
    [entry] = Ledger(csv.parent).read()
    assert entry.state == "maybe-submitted" and entry.ref is None and entry.public_score is None
    kaggle.drop.clear()
    result = runner.invoke(app, ["submissions", "--competition", SLUG, "--submissions", str(csv.parent), "--local"])
    assert result.exit_code == 0, result.output
    [entry] = Ledger(csv.parent).read()
    assert (entry.state, entry.ref, entry.public_score, entry.source.name) == ("submitted", 4242, 8.1234, "best")


def test_dry_run_is_listed_locally_without_network(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "demo_stack", test, cv_mse=9.25, kind="stack")
    assert submit(csv, root, "--dry-run").exit_code == 0
    assert submit(csv, root, "--dry-run").exit_code == 0  # a second dry run of the same file replaces the first
    assert kaggle.requests == []
    [entry] = Ledger(csv.parent).read()
    assert entry.state == "dry-run" and entry.ref is None and entry.source.cv_mse == 9.25
    result = runner.invoke(app, ["submissions", "--local", "--submissions", str(csv.parent)])
    assert result.exit_code == 0, result.output
    assert "demo_stack" in result.output and "9.2500" in result.output and "dry-run" in result.output
    assert kaggle.requests == []


def test_a_file_changed_since_its_record_has_an_unknown_source(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    csv = blend_csv(tmp_path / "subs", "best", test, cv_mse=8.0)
    write_submission(csv, np.zeros((len(test.file_names), 6, 2)), test)  # overwritten after the blend
    assert submit(csv, root, "--dry-run").exit_code == 0
    [entry] = Ledger(csv.parent).read()
    assert entry.source.kind == "unknown" and "hash differs" in entry.source.note


def test_submissions_made_outside_the_kit_are_matched_by_hash_or_unknown(kaggle: FakeKaggle, data, tmp_path):
    from kit.submit.kaggle import upload

    root, test = data
    folder = tmp_path / "subs"
    known = blend_csv(folder, "known", test, cv_mse=8.5)
    elsewhere = blend_csv(tmp_path / "elsewhere", "stray", test, cv_mse=9.0, seed=1)
    upload(known, SLUG, "by hand")  # the kaggle client directly: the ledger sees nothing
    upload(elsewhere, SLUG, "from another machine")
    assert not Ledger(folder).exists()
    result = runner.invoke(app, ["submissions", "--competition", SLUG, "--submissions", str(folder), "--local"])
    assert result.exit_code == 0, result.output
    by_ref = {e.ref: e for e in Ledger(folder).read()}
    assert by_ref[4242].state == "external" and by_ref[4242].source.name == "known"
    assert by_ref[4242].source.cv_mse == 8.5 and by_ref[4242].sha256 == file_sha256(known)
    assert by_ref[4243].source.kind == "unknown" and by_ref[4243].public_score == 8.1234
    assert "unknown" in result.output
    # listing again adds nothing new
    assert runner.invoke(app, ["submissions", "--competition", SLUG, "--submissions", str(folder)]).exit_code == 0
    assert len(Ledger(folder).read()) == 2


def test_kit_lb_plots_cv_against_public_scores(kaggle: FakeKaggle, data, tmp_path):
    root, test = data
    folder = tmp_path / "subs"
    cvs = [8.0, 8.4, 8.9, 9.3, 9.8, 8.6]
    publics = [8.21, 8.60, 9.12, 9.49, 10.02, 7.70]  # public ~ CV + 0.2, but the last one is far off
    kaggle.public_scores = [f"{v:.2f}" for v in publics]
    for i, cv in enumerate(cvs):
        csv = blend_csv(folder, f"b{i}", test, cv_mse=cv, seed=i)
        assert submit(csv, root, message=f"sub {i}").exit_code == 0
    refs = [e.ref for e in Ledger(folder).read()]
    assert refs == [4242 + i for i in range(6)]
    png = tmp_path / "lb.png"
    result = runner.invoke(app, ["lb", "--submissions", str(folder), "--out", str(png)])
    assert result.exit_code == 0, result.output
    r = np.corrcoef(cvs, publics)[0, 1]
    assert f"6 scored submissions; correlation r = {r:.3f}" in result.output
    disagree = [line for line in result.output.splitlines() if line.startswith("disagrees:")]
    assert len(disagree) == 1 and "#6 b5" in disagree[0]
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


def test_lb_fit_and_outliers_on_known_numbers():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = 2 * x + 1 + np.array([0.01, -0.01, 0.02, -0.02, 0.0])
    assert outliers(x, y) == []
    y[2] += 1.0
    assert [i for i, _, _ in outliers(x, y)] == [2]
    assert outliers(x[:3], y[:3]) == []  # too few to judge
    assert cv_vs_lb([], "mse").points == []


def test_corrupt_ledger_is_a_one_line_error(tmp_path):
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "ledger.jsonl").write_text('{"id": 1}\n')
    result = runner.invoke(app, ["submissions", "--local", "--submissions", str(folder)])
    assert result.exit_code == 1
    assert "ledger.jsonl: line 1: key 'competition'" in result.stderr and "Traceback" not in result.output
