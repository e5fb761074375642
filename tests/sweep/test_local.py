"""The local executor: two concurrent CPU jobs, finished folds skipped, a failed job, Ctrl-C and continue."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from sweep_helpers import EPOCHS, TINY, write_sweep
from tiny import kit_command, run_kit, set_args
from typer.testing import CliRunner

from kit.checkpoint import load_checkpoint
from kit.cli import app
from kit.runs import RunDir, load_run
from kit.sweep.local import LocalExecutor, plan_slots
from kit.sweep.records import log_file, read_records


def test_slots_split_the_cores_or_deal_the_gpus():
    assert [(s.threads, s.gpu) for s in plan_slots(2, 2, [])] == [(1, None), (1, None)]
    assert [(s.threads, s.gpu) for s in plan_slots(3, 16, ["2", "5"])] == [(5, "2"), (5, "5"), (5, "2")]
    assert plan_slots(4, 2, [])[0].threads == 1  # never fewer than one thread
    assert plan_slots(1, 2, [])[0].describe() == "local slot 0 (CPU, 2 threads)"
    assert LocalExecutor(jobs=None, cores=8, gpus=["0", "1"]).jobs == 2  # one job per GPU by default


def test_ray_needs_an_address(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "s.yaml"), "--data", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 1 and "--address HOST:PORT" in result.output


def _intervals_overlap(records) -> bool:
    spans = sorted((r.started, r.started + r.seconds) for r in records)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.slow  # trains models in child processes
def test_two_concurrent_cpu_jobs_train_every_fold_then_blend(local_sweep, sweep_data):
    folder, done = local_sweep
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "running on local slot 0 (CPU, 1 thread)" in out and "running on local slot 1 (CPU, 1 thread)" in out
    for run in ("tiny_a", "tiny_b"):
        assert f"{run}: finished, OOF MSE" in out
        loaded = load_run(folder / "runs" / run)
        assert loaded.oof.shape == (24, 100, 2) and len(loaded.metrics.folds) == 3
        assert "epoch 40/40" in log_file(folder / "runs", run, 2).read_text()
    records = read_records(folder / "runs")
    assert len(records) == 6 and {r.state for r in records} == {"done"}
    assert _intervals_overlap(records)  # two jobs at a time
    blend = json.loads((folder / "subs" / "tiny.json").read_text())
    assert sorted(item["run"] for item in blend["inputs"]) == ["tiny_a", "tiny_b"]
    assert (folder / "subs" / "tiny.csv").is_file()
    # the resolved pipelines the jobs trained
    assert "lr: 0.003" in (folder / "runs" / ".sweep" / "tiny_b.yaml").read_text()
    # every run, its folds from both concurrent jobs and the blend, in the embedded MLflow store
    from mlflow.tracking import MlflowClient

    from kit.tracking import default_uri

    client = MlflowClient(default_uri(folder / "runs"))
    experiment = client.get_experiment_by_name("kit").experiment_id
    for run in ("tiny_a", "tiny_b"):
        [parent] = client.search_runs([experiment], f"tags.`kit.kind` = 'run' and tags.`kit.run` = '{run}'")
        assert (
            parent.info.status == "FINISHED"
            and parent.data.metrics["oof_mse"] == load_run(folder / "runs" / run).oof_mse
        )
        folds = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(f.data.tags["kit.fold"] for f in folds) == ["0", "1", "2"]
        assert all(len(client.get_metric_history(f.info.run_id, "valid_mse")) == 40 for f in folds)
    [tracked_blend] = client.search_runs([experiment], "tags.`kit.kind` = 'blend'")
    assert tracked_blend.data.metrics["cv_mse"] == blend["blend_mse"]

    again = run_kit(
        "sweep",
        str(folder / "sweep.yaml"),
        "--data",
        str(sweep_data),
        "--out",
        str(folder / "runs"),
        "--submissions",
        str(folder / "subs"),
        *set_args(TINY + EPOCHS),
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished earlier, skipped") == 6 and "running on" not in again.stdout


@pytest.mark.slow  # trains models in child processes
def test_a_failed_job_does_not_stop_the_others(sweep_data, tmp_path):
    path = write_sweep(
        tmp_path,
        "pipelines:\n  - pipeline: broken.yaml\n  - pipeline: tiny_a.yaml\n"
        "blend: {method: mean, name: what_finished}\n",
        {
            "broken.yaml": "name: broken\nmodel: {backbone: no_such_backbone}\n",
            "tiny_a.yaml": "name: tiny_a\nmodel: {backbone: test_resnet}\n",
        },
    )
    args = [
        str(path),
        "--data",
        str(sweep_data),
        "--out",
        str(tmp_path / "runs"),
        "--submissions",
        str(tmp_path / "subs"),
    ]
    tiny = [item for item in TINY if not item.startswith("model.backbone=")]  # each pipeline names its backbone

    bad_set = run_kit("sweep", *args, *set_args([*TINY, "optim.lrr=1"]))
    assert bad_set.returncode == 1 and "unknown key 'optim.lrr'" in bad_set.stderr  # before any job
    assert not (tmp_path / "runs" / "tiny_a").exists()

    done = run_kit("sweep", *args, "--jobs", "2", *set_args(tiny))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 job(s) failed: broken fold 0, broken fold 1, broken fold 2" in done.stderr
    assert "broken fold 0: failed" in done.stdout and "unknown timm model 'no_such_backbone'" in done.stdout
    assert load_run(tmp_path / "runs" / "tiny_a").metrics.oof_mse > 0  # the others went on
    assert json.loads((tmp_path / "subs" / "what_finished.json").read_text())["inputs"][0]["run"] == "tiny_a"
    assert "without unfinished broken" in done.stdout


@pytest.mark.slow  # trains models in child processes
def test_ctrl_c_stops_the_jobs_cleanly_and_the_same_command_continues(sweep_data, tmp_path):
    path = write_sweep(tmp_path, "pipelines:\n  - pipeline: tiny_a.yaml\n", {"tiny_a.yaml": "name: tiny_a\n"})
    args = [str(path), "--data", str(sweep_data), "--out", str(tmp_path / "runs"), "--jobs", "2"]
    args += set_args([*TINY, "train.epochs=100"])
    env = os.environ | {"COLUMNS": "200"}
    sweep = subprocess.Popen(
        kit_command("sweep", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 180
        lines = []
        while time.monotonic() < deadline:
            line = sweep.stdout.readline()
            lines.append(line)
            if "/100, valid MSE" in line or not line:  # a job finished an epoch (lines come 2 s apart at most)
                break
        assert any("/100, valid MSE" in line for line in lines), "".join(lines)
        sweep.send_signal(signal.SIGINT)  # Ctrl-C reaches the sweep only: its jobs run in their own sessions
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, err
    assert "interrupted" in out and "run the same command to continue" in err
    run = RunDir(tmp_path / "runs" / "tiny_a")
    stopped = [fold for fold in range(3) if run.checkpoint(fold, "last").is_file() and run.read_fold(fold) is None]
    assert stopped, "an interrupted fold keeps its resumable checkpoint"
    assert {r.state for r in read_records(tmp_path / "runs")} <= {"interrupted", "queued", "done"}

    # Either job may be the one that finished an epoch: the other stopped mid-epoch and resumes inside it.
    saved = load_checkpoint(run.checkpoint(stopped[0], "last"))
    resumes_at = saved["epoch"] + (1 if saved["partial"] else 2)  # 1-based, as the log counts epochs

    done = run_kit("sweep", *args)
    assert done.returncode == 0, done.stderr
    assert load_run(run.path).metrics.oof_mse > 0
    log = log_file(tmp_path / "runs", "tiny_a", stopped[0]).read_text()
    resumed = log.split('#sweep {"event": "start"')[-1]
    first_epoch = next(line for line in resumed.splitlines() if line.startswith(f"fold {stopped[0]} epoch "))
    assert first_epoch.startswith(f"fold {stopped[0]} epoch {resumes_at}/"), "resumed from its checkpoint"
    assert f"fold {stopped[0]}: resuming after" in resumed
    np.testing.assert_array_equal(np.load(run.path / "oof.npy").shape, (24, 100, 2))
