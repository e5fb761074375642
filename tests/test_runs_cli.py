"""``kit runs``: the leaderboard of a runs folder (table, JSON, sorting, states, blends) and ``--diff``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ensemble_records import fake_record
from fake_runs import write_finished_folds
from typer.testing import CliRunner

import kit.models  # noqa: F401  (registers the model families' config sections)
from kit.cli import app
from kit.config import load_pipeline
from kit.errors import KitError
from kit.locks import acquire_lock, release_lock
from kit.runs import LOCK_FILE, FoldSummary, Identity, RunDir, SplitInfo, load_run
from kit.runs_table import diff_runs, list_runs
from kit.sweep.records import JobRecord, pipeline_file, write_record

runner = CliRunner()
K, N, P = 3, 12, 4
SPLIT = SplitInfo(folds_sha256="f" * 64, train_names_sha256="a" * 64, test_names_sha256="b" * 64, n_points=P)


def _pipeline(tmp_path: Path, name: str, overrides=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{backbone: resnet18}}\n")
    return load_pipeline(path, list(overrides))


def _write_run(runs: Path, pipeline, noise: float, folds_done: int = K) -> RunDir:
    """A run through the contract (no training): folds with predictions ``noise`` px off, assembled when all done."""
    rng = np.random.default_rng(int(noise * 100))
    truth = rng.uniform(0, 50, (N, P, 2)).astype(np.float32)
    fold_of = np.arange(N) % K
    run = RunDir.under(runs, pipeline.name)
    identity = Identity.of(pipeline, SPLIT)
    run.record(pipeline, SPLIT, None)
    for fold in range(folds_done):
        rows = fold_of == fold
        oof = truth[rows] + rng.normal(0, noise, truth[rows].shape)
        mse = float(np.mean((oof - truth[rows]) ** 2))
        summary = FoldSummary(
            fold=fold,
            mse=mse,
            best_epoch=1,
            epochs=2,
            wall_seconds=10.0 + fold,
            images_per_second=100.0,
            identity=identity,
            n_train=8,
            n_valid=4,
        )
        run.write_fold(fold, summary, oof, rng.normal(20, 1, (3, P, 2)))
    if folds_done == K:
        assert run.assemble(pipeline, SPLIT, truth, fold_of) is not None
    return run


@pytest.fixture
def runs(tmp_path):
    """good (finished), worse (finished, another lr), half (1 of 3 folds), broken (a sweep job that failed)."""
    folder = tmp_path / "runs"
    _write_run(folder, _pipeline(tmp_path, "good"), noise=1.0)
    _write_run(folder, _pipeline(tmp_path, "worse", ["optim.lr=3e-3", "input.size=96"]), noise=3.0)
    _write_run(folder, _pipeline(tmp_path, "half"), noise=2.0, folds_done=1)
    broken = _pipeline(tmp_path, "broken", ["model.backbone=no_such_model"])
    pipeline_file(folder, "broken").parent.mkdir(parents=True)
    pipeline_file(folder, "broken").write_text(f"name: broken\nmodel: {{backbone: {broken.model.backbone}}}\n")
    error = "model.backbone: unknown timm model 'no_such_model'"
    write_record(folder, JobRecord(run="broken", fold=0, state="failed", error=error))
    subs = tmp_path / "subs"
    subs.mkdir()
    fake_record(subs / "best.json", {name: folder / name for name in ("good", "worse")})
    fake_record(subs / "solo.json", {"good": folder / "good"}, kind="stack")
    (subs / "notes.json").write_text("[1, 2]")  # not a blend record: ignored
    return folder


def test_one_row_per_run_best_first(runs, tmp_path):
    rows = list_runs(runs, tmp_path / "subs")
    assert [row.name for row in rows] == ["good", "worse", "broken", "half"]
    good, worse, broken, half = rows
    assert good.state == worse.state == "finished" and good.oof_mse < worse.oof_mse
    assert (good.family, good.backbone, good.input_size, good.epochs) == ("regression", "resnet18", 128, 10)
    assert worse.input_size == 96 and (good.folds_done, good.folds_total) == (3, 3)
    assert good.fold_mse_std > 0 and good.wall_seconds == pytest.approx(33.0) and good.images_per_second == 100.0
    assert good.split_sha == worse.split_sha and good.pipeline_sha != worse.pipeline_sha and len(good.split_sha) == 10
    assert good.blends == ["best", "solo"] and worse.blends == ["best"] and half.blends == []
    assert (half.state, half.folds_done, half.folds_total, half.oof_mse) == ("partial", 1, None, None)
    assert half.fold_mse is not None and half.wall_seconds == pytest.approx(10.0)
    assert broken.state == "failed" and broken.error == "fold 0: model.backbone: unknown timm model 'no_such_model'"
    assert broken.backbone == "no_such_model" and broken.folds_done == 0
    assert [row.name for row in list_runs(runs, tmp_path / "subs", sort="name")] == ["broken", "good", "half", "worse"]
    assert list_runs(runs, tmp_path / "subs", folds=3)[-1].folds_total == 3
    # the OOF NME as the run recorded it (face box), none for unfinished runs
    assert good.oof_nme == load_run(runs / "good").metrics.oof_nme and 0 < good.oof_nme < worse.oof_nme
    assert good.oof_failure_rate is not None and good.nme_points is None and half.oof_nme is None


def test_states_running_and_unreadable(runs, tmp_path):
    lock = RunDir(runs / "half").fold_dir(1) / LOCK_FILE
    lock.parent.mkdir(parents=True)
    acquire_lock(lock, "fold 1")
    try:
        half = next(row for row in list_runs(runs, tmp_path / "subs") if row.name == "half")
        assert half.state == "running" and half.running[0].startswith("fold 1 on ")
    finally:
        release_lock(lock)
    (runs / "worse" / "metrics.json").write_text("{")
    worse = next(row for row in list_runs(runs, tmp_path / "subs") if row.name == "worse")
    assert worse.state == "failed" and "metrics.json: unreadable" in worse.error


def test_finished_runs_are_listed_from_their_records_alone(runs, tmp_path):
    """Without --data, no prediction array is read and no model family (torch) is imported."""
    import os
    import subprocess
    import sys

    before = {row.name: row for row in list_runs(runs, tmp_path / "subs")}
    for name in ("good", "worse"):
        for array in ("oof.npy", "test.npy"):
            (runs / name / array).write_bytes(b"not an array")
    after = {row.name: row for row in list_runs(runs, tmp_path / "subs")}
    assert after == before
    finished = tmp_path / "finished"  # an unfinished run's pipeline is validated, with the model families
    for name in ("good", "worse"):
        shutil.copytree(runs / name, finished / name)
    code = (
        "import sys\nfrom kit.cli import app\n"
        f"sys.argv = ['kit', 'runs', {str(finished)!r}, '--submissions', {str(tmp_path / 'subs')!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ | {"COLUMNS": "300"}
    )
    assert done.returncode == 0, done.stderr
    assert " good " in done.stdout and " worse " in done.stdout


def test_cli_table_and_json(runs, tmp_path):
    result = runner.invoke(app, ["runs", str(runs), "--submissions", str(tmp_path / "subs")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    order = [next(i for i, line in enumerate(lines) if f" {name} " in line) for name in ("good", "worse", "broken")]
    assert order == sorted(order)
    good = next(line for line in lines if " good " in line)
    assert "3/3" in good and "finished" in good and "best, solo" in good and "±" in good
    assert "OOF NME" in result.output and ">10%" in result.output
    metrics = load_run(runs / "good").metrics
    assert f" {metrics.oof_nme:.2f}% " in good and f" {metrics.oof_failure_rate:.1f}% " in good
    assert "failed: fold 0: model.backbone" in result.output and "1/?" in result.output

    result = runner.invoke(
        app, ["runs", str(runs), "--submissions", str(tmp_path / "subs"), "--json", "--sort", "name"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == ["broken", "good", "half", "worse"]
    assert rows[1]["state"] == "finished" and rows[1]["blends"] == ["best", "solo"] and rows[1]["oof_mse"] > 0
    assert rows[1]["oof_nme"] == load_run(runs / "good").metrics.oof_nme and rows[1]["nme_points"] is None
    assert "oof_failure_rate" in rows[1] and rows[2]["oof_nme"] is None

    # sorted by NME, worst first when the order is reversed by making the good run's NME the worst
    metrics = json.loads((runs / "good" / "metrics.json").read_text())
    (runs / "good" / "metrics.json").write_text(json.dumps(metrics | {"oof_nme": 1e6}))
    result = runner.invoke(app, ["runs", str(runs), "--json", "--sort", "oof_nme"])
    assert [row["name"] for row in json.loads(result.output)][:2] == ["worse", "good"]
    assert [row["name"] for row in json.loads(runner.invoke(app, ["runs", str(runs), "--json"]).output)][:2] == [
        "good",
        "worse",
    ]
    result = runner.invoke(app, ["runs", str(runs), "--nme-points", "0,1"])
    assert result.exit_code == 1 and "--nme-points needs --data" in result.output

    result = runner.invoke(app, ["runs", str(runs), "--sort", "speed"])
    assert result.exit_code == 1 and "--sort speed: choose one of" in result.output
    result = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "runs folder not found" in result.output


def test_diff_names_the_keys_that_differ(runs, tmp_path):
    diff = diff_runs(runs, "good", "worse")
    assert [(key, a, b) for key, a, b in diff.keys] == [("input.size", 128, 96), ("optim.lr", 0.001, 0.003)]
    assert diff.same_split
    result = runner.invoke(app, ["runs", str(runs), "--diff", "good", "worse"])
    assert result.exit_code == 0, result.output
    assert "input.size: 128 -> 96" in result.output and "optim.lr: 0.001 -> 0.003" in result.output
    assert "split: same" in result.output
    result = runner.invoke(app, ["runs", str(runs), "--diff", "good", str(runs / "good"), "--json"])
    assert json.loads(result.output)["keys"] == []
    result = runner.invoke(app, ["runs", str(runs), "--diff", "good", "broken"])
    assert result.exit_code == 1 and "not a kit run folder" in result.output
    with pytest.raises(KitError, match="not a kit run folder"):
        diff_runs(runs, "good", str(tmp_path))


def test_with_data_a_run_of_another_normalisation_gets_its_nme_recomputed(make_competition, tmp_path):
    from kit.data.competition import Competition
    from kit.data.folds import make_folds, write_folds

    tiny = make_competition(n_train=9, n_points=6)
    comp = Competition.load(tiny.root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    split, truth = SplitInfo.of(comp), comp.train.points.astype(np.float32)
    fold_of = np.asarray(make_folds(comp.train.file_names, k=3, seed=0)["fold"])
    pipeline = _pipeline(tmp_path, "run")
    run = RunDir.under(tmp_path / "runs", "run")
    run.record(pipeline, split, None)
    oof = truth + np.array([3.0, 4.0], np.float32)  # every point 5 px off
    write_finished_folds(run, pipeline, split, fold_of, oof, np.zeros((len(comp.test), 6, 2)), lambda rows: 12.5)
    recorded = run.assemble(pipeline, split, truth, fold_of)  # the face box
    eyes = np.hypot(*(truth[:, 0] - truth[:, 1]).T.astype(np.float64))

    def listed(*options):
        result = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)[0]

    row = listed("--data", str(tiny.root))  # the same normalisation: the recorded figure
    assert (row["oof_nme"], row["nme_points"]) == (recorded.oof_nme, None)
    row = listed("--data", str(tiny.root), "--nme-points", "0,1")
    assert row["oof_nme"] == pytest.approx(np.mean(500 / eyes)) and row["nme_points"] == [0, 1]
    assert row["oof_failure_rate"] == pytest.approx(100 * np.mean(500 / eyes > 10))
    (tiny.root / "nme_points.txt").write_text("0 1\n")
    assert listed("--data", str(tiny.root))["oof_nme"] == pytest.approx(np.mean(500 / eyes))
    assert listed()["oof_nme"] == recorded.oof_nme  # without the data: as recorded
    result = runner.invoke(
        app, ["runs", str(tmp_path / "runs"), "--data", str(tiny.root), "--nme-points", "0,9"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 1 and "--nme-points: point 9 out of range (the faces have 6 points" in result.output
    # a table of runs measured differently names each one's normalisation
    (tiny.root / "nme_points.txt").unlink()
    shutil.copytree(run.path, tmp_path / "runs" / "copy")
    metrics = json.loads((tmp_path / "runs" / "copy" / "metrics.json").read_text())
    (tmp_path / "runs" / "copy" / "metrics.json").write_text(json.dumps(metrics | {"nme_points": [0, 1]}))
    result = runner.invoke(app, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "300"})
    assert "(face box)" in result.output and "(points 0-1)" in result.output


def test_blends_are_found_from_anywhere_and_when_moved_with_their_runs(runs, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "project"
    moved.mkdir(parents=True)
    shutil.move(runs, moved / "runs")
    shutil.move(tmp_path / "subs", moved / "subs")
    monkeypatch.chdir(tmp_path / "elsewhere")
    rows = {row.name: row for row in list_runs("project/runs", "project/subs")}
    assert rows["good"].blends == ["best", "solo"] and rows["worse"].blends == ["best"]
    (moved / "subs" / "best.npz").write_bytes(b"changed")  # a record whose parameters changed is not listed
    assert {row.name: row for row in list_runs("project/runs", "project/subs")}["good"].blends == ["solo"]
