"""MLflow tracking with the real parts: a real ``mlflow server`` on 127.0.0.1 with a SQLite backend (started and
stopped here), the embedded SQLite store, a tracker that is down, backfill of existing runs, and MLflow missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny import set_args, tiny_settings
from typer.testing import CliRunner

import kit.models  # noqa: F401  (registers the model families' config sections)
from kit.cli import app
from kit.config import load_pipeline
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.runs import RunDir, pipeline_sha256
from kit.synth import generate_competition
from kit.tracking import URI_ENV, default_uri, resolve_uri

runner = CliRunner()
K, EPOCHS = 3, 2
TINY = tiny_settings({"train.report_images": 2, "optim.lr": "3e-3"}, drop=("train.epochs",))  # epochs: per test
SERVER_START_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend on a free port of 127.0.0.1; stopped at the end, also on failure."""
    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--workers", "1"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode}: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up within {SERVER_START_S:g} s")
            time.sleep(0.5)
        yield url
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("comp") / "c"
    generate_competition(root, n_train=18, n_test=4, seed=3, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=K, seed=0))
    return root


def _pipeline_file(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{pretrained: {{source: none}}}}\n{extra}")
    return path


def _fold_train(pipeline: Path, data: Path, runs: Path, *extra: str, epochs: int = EPOCHS):
    sets = set_args([*TINY, f"train.epochs={epochs}"])
    args = ["fold-train", str(pipeline), "--data", str(data), "--out", str(runs), *sets, *extra]
    return runner.invoke(app, args)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, **tags) -> list:
    experiment = client.get_experiment_by_name("kit")
    assert experiment is not None
    where = " and ".join(f"tags.`{k.replace('_', '.', 1)}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment.experiment_id], where, max_results=100)


def _artifacts(client, run_id: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_run_folds_epochs_and_blend_logged_to_a_real_server(mlflow_server, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv(URI_ENV, raising=False)
    runs = tmp_path / "runs"
    result = _fold_train(
        _pipeline_file(tmp_path, "srv"), tiny_data, runs, "--track", "mlflow", "--tracking-uri", mlflow_server
    )
    assert result.exit_code == 0, result.output
    assert f"tracking: {mlflow_server}" in result.output and "warning" not in result.output
    metrics = json.loads((runs / "srv" / "metrics.json").read_text())
    client = _client(mlflow_server)

    [parent] = _runs(client, kit_kind="run", kit_run="srv")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "srv"
    assert parent.data.metrics["oof_mse"] == pytest.approx(metrics["oof_mse"])
    assert parent.data.metrics["oof_nme"] == pytest.approx(metrics["oof_nme"])
    assert parent.data.params["model.backbone"] == "test_resnet" and parent.data.params["train.epochs"] == str(EPOCHS)
    pipeline = RunDir(runs / "srv").read_pipeline()
    assert parent.data.tags["kit.pipeline_sha256"] == pipeline_sha256(pipeline)
    assert parent.data.tags["kit.labels_sha256"] == metrics["identity"]["labels_sha256"]
    assert {"report.png", "pipeline.yaml"} <= _artifacts(client, parent.info.run_id)
    mean_curve = client.get_metric_history(parent.info.run_id, "valid_mse")
    assert [m.step for m in mean_curve] == list(range(1, EPOCHS + 1))

    children = _runs(client, kit_kind="fold", kit_run="srv")
    assert sorted(int(c.data.tags["kit.fold"]) for c in children) == list(range(K))
    for child in children:
        fold = int(child.data.tags["kit.fold"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        done = json.loads((runs / "srv" / f"fold{fold}" / "done.json").read_text())
        assert child.data.metrics["fold_mse"] == pytest.approx(done["mse"])
        history = client.get_metric_history(child.info.run_id, "valid_mse")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        assert [m.value for m in history] == pytest.approx([h["valid_mse"] for h in done["history"]])
        nme = client.get_metric_history(child.info.run_id, "valid_nme")
        assert [m.value for m in nme] == pytest.approx([h["valid_nme"] for h in done["history"]])
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == EPOCHS

    subs = tmp_path / "subs"
    args = ["blend", str(runs / "srv"), "--data", str(tiny_data), "--method", "mean", "--name", "solo"]
    result = runner.invoke(app, [*args, "--out-dir", str(subs), "--track", "mlflow", "--tracking-uri", mlflow_server])
    assert result.exit_code == 0, result.output
    record = json.loads((subs / "solo.json").read_text())
    [blend] = _runs(client, kit_kind="blend", kit_ensemble="solo")
    assert blend.data.metrics["cv_mse"] == pytest.approx(record["blend_mse"])
    assert blend.data.metrics["cv_nme"] == pytest.approx(record["blend_nme"])
    assert blend.data.tags["kit.input_run_ids"] == parent.info.run_id
    assert {"solo.json", "solo.png"} <= _artifacts(client, blend.info.run_id)


@pytest.mark.slow
def test_embedded_store_by_default_and_export_backfills(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv(URI_ENV, raising=False)
    runs = tmp_path / "runs"
    result = _fold_train(_pipeline_file(tmp_path, "emb"), tiny_data, runs, "--track", "mlflow", epochs=1)
    assert result.exit_code == 0, result.output
    assert (runs / "mlflow.db").is_file()
    client = _client(default_uri(runs))
    [parent] = _runs(client, kit_kind="run", kit_run="emb")
    assert parent.info.status == "FINISHED" and len(_runs(client, kit_kind="fold", kit_run="emb")) == K
    assert (runs / "mlartifacts" / parent.info.run_id / "artifacts" / "report.png").is_file()

    # A run trained without tracking is backfilled by kit runs --export mlflow, once.
    result = _fold_train(_pipeline_file(tmp_path, "plain"), tiny_data, runs, epochs=1)
    assert result.exit_code == 0 and "tracking:" not in result.output
    assert _runs(client, kit_kind="run", kit_run="plain") == []
    result = runner.invoke(app, ["runs", str(runs), "--export", "mlflow"])
    assert result.exit_code == 0, result.output
    assert "plain: exported" in result.output and "emb: present" in result.output
    [plain] = _runs(client, kit_kind="run", kit_run="plain")
    metrics = json.loads((runs / "plain" / "metrics.json").read_text())
    assert plain.data.metrics["oof_mse"] == pytest.approx(metrics["oof_mse"]) and plain.info.status == "FINISHED"
    assert len(_runs(client, kit_kind="fold", kit_run="plain")) == K
    result = runner.invoke(app, ["runs", str(runs), "--export", "mlflow"])
    assert "plain: present" in result.output and len(_runs(client, kit_kind="run", kit_run="plain")) == 1


@pytest.mark.slow
def test_a_tracker_that_is_down_costs_one_warning(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv(URI_ENV, raising=False)
    runs = tmp_path / "runs"
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    result = _fold_train(
        _pipeline_file(tmp_path, "down"), tiny_data, runs, "--track", "mlflow", "--tracking-uri", down, epochs=1
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: tracking")]
    assert len(warnings) == 1 and down in warnings[0], result.stderr
    assert "Traceback" not in result.output
    assert (runs / "down" / "metrics.json").is_file()  # the kit's own records are complete
    assert time.monotonic() - start < 300


def test_without_mlflow_track_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    (tmp_path / "data").mkdir()
    result = _fold_train(_pipeline_file(tmp_path, "x"), tmp_path / "data", tmp_path / "runs", "--track", "mlflow")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install -e '.[track]'" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_tracking_is_not_part_of_the_run_identity(tmp_path):
    plain = load_pipeline(_pipeline_file(tmp_path, "a"))
    tracked = load_pipeline(_pipeline_file(tmp_path, "b", "tracking: {uri: 'http://127.0.0.1:1'}\n"))
    assert pipeline_sha256(plain) == pipeline_sha256(tracked)
    assert tracked.tracking.backend == "mlflow"


def test_which_uri(tmp_path, monkeypatch):
    monkeypatch.delenv(URI_ENV, raising=False)
    runs = tmp_path / "runs"
    tracked = load_pipeline(_pipeline_file(tmp_path, "b", "tracking: {uri: 'http://pipeline:5000'}\n"))
    assert resolve_uri(None, None, None, runs) is None
    assert resolve_uri("mlflow", None, None, runs) == f"sqlite:///{runs.absolute()}/mlflow.db"
    assert resolve_uri(None, None, tracked.tracking, runs) == "http://pipeline:5000"
    assert resolve_uri("none", None, tracked.tracking, runs) is None
    monkeypatch.setenv(URI_ENV, "http://env:5000")
    assert resolve_uri(None, None, None, runs) == "http://env:5000"
    assert resolve_uri("mlflow", "http://flag:1", tracked.tracking, runs) == "http://flag:1"
