"""Faults during training: non-finite losses, signals, exact resume, corrupt artifacts, runtime errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import set_args, tiny_settings
from typer.testing import CliRunner

from kit.cli import app
from kit.config import load_pipeline
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import Interrupted, KitError
from kit.progress import SilentReporter
from kit.runs import RunDir
from kit.synth import generate_competition
from kit.train import fold_train
from kit.train.engine import NonFiniteLoss

pytestmark = pytest.mark.slow  # trains models

TINY = tiny_settings(
    {"model.drop_rate": 0.2, "train.batch_size": 4, "train.epochs": 3, "train.log_every": 1},
    drop=("augment.blur", "augment.noise"),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "c"
    generate_competition(root, n_train=18, n_test=3, seed=5, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=2, seed=0))
    return root


def _pipeline(tmp_path: Path, extra=()):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmodel: {pretrained: {source: none}}\n")
    return path, load_pipeline(path, [*TINY, *extra])


def _artifacts(run: Path) -> dict:
    out = {name: np.load(run / name) for name in ("oof.npy", "test.npy")}
    for fold in (0, 1):
        out[f"fold{fold} losses"] = [h.train_loss for h in RunDir(run).read_fold(fold).history]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    _, pipeline = _pipeline(tmp)
    fold_train(pipeline, data, out_dir=tmp / "runs")
    return _artifacts(tmp / "runs" / "p")


class SignalAt(SilentReporter):
    """Sends ``sig`` to this process after the ``at``-th training step (steps are reported one by one)."""

    def __init__(self, at: int, sig: int = signal.SIGTERM):
        self.at, self.sig, self.steps = at, sig, 0

    def batch(self, loss, images_per_second, advance=1):
        before, self.steps = self.steps, self.steps + advance
        if before < self.at <= self.steps:
            os.kill(os.getpid(), self.sig)


def test_stopped_at_several_points_and_resumed_ends_exactly_as_uninterrupted(data, tmp_path, uninterrupted):
    _, pipeline = _pipeline(tmp_path)
    out = tmp_path / "runs"
    # 9 training rows per fold at batch 4: 2 steps an epoch (drop_last), 3 epochs, 2 folds.
    points = [
        (1, "fold 0 epoch 1 step 1"),
        (2, "fold 0 epoch 2 step 1"),
        (4, "fold 1 epoch 1 step 1"),
        (1, "fold 1 epoch 1 end"),
    ]
    for at, where in points:
        with pytest.raises(Interrupted, match=rf"SIGTERM in {where}: saved .*last.pt; rerun the same command"):
            fold_train(pipeline, data, out_dir=out, reporter=SignalAt(at))
        assert not list((out / "p").rglob(".*.tmp"))
    assert fold_train(pipeline, data, out_dir=out) is not None
    _assert_same(_artifacts(out / "p"), uninterrupted)


def test_kill_9_then_resume_ends_exactly_as_uninterrupted(data, tmp_path, uninterrupted):
    path, _ = _pipeline(tmp_path)
    args = [
        sys.executable,
        "-m",
        "kit",
        "fold-train",
        str(path),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "runs"),
        *set_args(TINY),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "runs" / "p" / "fold0" / "last.pt"
    try:
        deadline = time.time() + 120
        while not last.is_file():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same(_artifacts(tmp_path / "runs" / "p"), uninterrupted)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_cli_saves_and_exits_with_its_code(data, tmp_path, sig, code):
    path, _ = _pipeline(tmp_path, ["train.epochs=200"])
    args = [
        sys.executable,
        "-m",
        "kit",
        "fold-train",
        str(path),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "runs"),
        *set_args([*TINY, "train.epochs=200"]),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "runs" / "p" / "fold0" / "last.pt"
    try:
        deadline = time.time() + 120
        while not last.is_file():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code
    assert "interrupted:" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    state = torch.load(last, weights_only=False)
    assert state["partial"] is not None or state["epoch"] >= 0  # a resumable checkpoint
    assert not list((tmp_path / "runs").rglob(".*.tmp"))


def test_non_finite_loss_stops_the_fold_and_the_fixed_pipeline_restarts(data, tmp_path):
    path, _ = _pipeline(tmp_path)
    command = ["fold-train", str(path), "--data", str(data), "--out", str(tmp_path / "runs"), "--folds", "0"]
    result = CliRunner().invoke(app, [*command, *set_args([*TINY, "optim.lr=1e6", "optim.clip_grad=null"])])
    assert result.exit_code == 1
    assert "fold 0 epoch " in result.output and "not finite; lower optim.lr (now 1e+06)" in result.output
    assert RunDir(tmp_path / "runs" / "p").read_fold(0) is None  # nothing marked done
    again = CliRunner().invoke(app, [*command, *set_args([*TINY, "optim.lr=1e6", "optim.clip_grad=null"])])
    assert again.exit_code == 1 and "not finite" in again.output  # the same error, not a missing best.pt
    fixed = CliRunner().invoke(app, [*command, *set_args(TINY)])
    assert fixed.exit_code == 0, fixed.output
    assert RunDir(tmp_path / "runs" / "p").read_fold(0) is not None


def test_non_finite_later_keeps_the_last_finite_checkpoint(data, tmp_path, monkeypatch):
    from kit.models.regression import RegressionModel

    _, pipeline = _pipeline(tmp_path, ["train.log_every=10"])
    real_loss, calls = RegressionModel.loss, []

    def loss(self, outputs, target, progress):
        calls.append(1)
        value = real_loss(self, outputs, target, progress)
        return value * float("inf") if len(calls) == 4 else value  # epoch 2, its second step

    monkeypatch.setattr(RegressionModel, "loss", loss)
    with pytest.raises(NonFiniteLoss, match=r"fold 0 epoch 2 step 2: the loss or gradient norm is not finite"):
        fold_train(pipeline, data, out_dir=tmp_path / "runs", folds="0")
    run = RunDir(tmp_path / "runs" / "p")
    state = torch.load(run.checkpoint(0, "last"), weights_only=False)
    assert state["epoch"] == 0 and state["partial"] is None  # epoch 1's checkpoint, finite
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert run.read_fold(0) is None


def test_progress_reads_the_loss_every_log_every_steps(data, tmp_path):
    class Count(SilentReporter):
        def __init__(self):
            self.calls = []

        def batch(self, loss, images_per_second, advance=1):
            self.calls.append(advance)

    _, pipeline = _pipeline(tmp_path, ["train.log_every=3", "train.epochs=1", "train.batch_size=2"])
    reporter = Count()
    fold_train(pipeline, data, out_dir=tmp_path / "runs", folds="0", reporter=reporter)
    assert reporter.calls == [3, 1]  # 4 steps: one read after 3, one at the end of the epoch


def test_corrupt_artifacts_are_named_with_the_remedy(data, tmp_path):
    _, pipeline = _pipeline(tmp_path, ["train.epochs=1"])
    fold_train(pipeline, data, out_dir=tmp_path / "runs")
    run = RunDir(tmp_path / "runs" / "p")
    (run.fold_dir(0) / "oof.npy").write_bytes(b"")
    with pytest.raises(KitError, match=rf"fold0/oof.npy: not a readable .npy file .*delete {run.fold_dir(0)} and"):
        fold_train(pipeline, data, out_dir=tmp_path / "runs")
    (run.fold_dir(0) / "oof.npy").write_bytes(b"garbage" * 10)
    with pytest.raises(KitError, match=r"fold0/oof.npy: not a readable .npy file"):
        fold_train(pipeline, data, out_dir=tmp_path / "runs")
    # a truncated resumable checkpoint
    (run.fold_dir(0) / "done.json").unlink()
    run.checkpoint(0, "last").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(KitError, match=r"fold0/last.pt: not a readable checkpoint .*delete it to retrain fold0"):
        fold_train(pipeline, data, out_dir=tmp_path / "runs")


def test_out_of_memory_and_dead_workers_name_the_remedy(data, tmp_path, monkeypatch):
    from kit.data.dataset import CropDataset
    from kit.models.regression import RegressionModel

    _, pipeline = _pipeline(tmp_path, ["train.epochs=1"])

    def oom(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(RegressionModel, "forward", oom)
        with pytest.raises(
            KitError,
            match=r"fold 0: out of device memory at train.batch_size=4; lower it "
            r"\(--set train.batch_size=2\)",
        ):
            fold_train(pipeline, data, out_dir=tmp_path / "runs")

    real = CropDataset.__getitem__

    def die_in_worker(self, key):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, key)

    _, workers = _pipeline(tmp_path, ["train.epochs=1", "train.num_workers=1"])
    monkeypatch.setattr(CropDataset, "__getitem__", die_in_worker)
    with pytest.raises(KitError, match=r"fold 0: a DataLoader worker died .*lower train.num_workers"):
        fold_train(workers, data, out_dir=tmp_path / "runs2")


def test_malformed_set_value_names_the_key(tmp_path):
    path, _ = _pipeline(tmp_path)
    result = CliRunner().invoke(app, ["fold-train", str(path), "--data", str(tmp_path), "--set", "optim.lr=[1"])
    assert result.exit_code == 1
    assert "--set optim.lr: value '[1' is not valid YAML" in result.output
