"""The run contract: identity of finished folds, validation before any work, locks, plain run names."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import write_finished_folds
from tiny import set_args, tiny_settings
from typer.testing import CliRunner

from kit.cli import app
from kit.config import load_pipeline
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import KitError
from kit.locks import acquire_lock, release_lock
from kit.runs import Identity, RunDir, SplitInfo, load_run
from kit.synth import generate_competition
from kit.train import fold_train
from kit.train.run import run_identity

TINY = tiny_settings()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "c"
    generate_competition(root, n_train=15, n_test=3, seed=4, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    return root


def _pipeline(tmp_path: Path, name: str, extra=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{pretrained: {{source: none}}}}\n")
    return path, load_pipeline(path, [*TINY, *extra])


def _fresh_copy(data: Path, tmp_path: Path) -> Path:
    """A copy of the competition without derived files: nothing a failed command writes can hide."""
    root = tmp_path / "fresh"
    shutil.copytree(data, root, ignore=shutil.ignore_patterns(".kit_cache", "flip_permutation.txt"))
    return root


def _derived(root: Path) -> list[str]:
    return sorted(p.name for p in [root / ".kit_cache", root / "flip_permutation.txt"] if p.exists())


def test_identity_names_what_differs():
    split = SplitInfo(folds_sha256="a", train_names_sha256="b", test_names_sha256="c", n_points=3)
    ident = Identity(pipeline_sha256="p", split_sha256=split.digest(), kit_version="1")
    assert ident.differences(ident) == []
    other = ident.model_copy(update={"pipeline_sha256": "q", "kit_version": "2"})
    assert ident.differences(other) == ["pipeline", "kit version"]
    assert split.first_difference(split.model_copy(update={"n_points": 4})) == "n_points"


@pytest.mark.slow  # trains
def test_a_fold_from_another_pipeline_or_split_is_never_skipped(data, tmp_path):
    _, first = _pipeline(tmp_path, "first")
    fold_train(first, data, out_dir=tmp_path / "runs", folds="0")
    # A fold folder copied from a run of another backbone / learning rate.
    _, second = _pipeline(tmp_path, "second", ["optim.lr=0.01"])
    shutil.copytree(tmp_path / "runs" / "first" / "fold0", tmp_path / "runs" / "second" / "fold0")
    with pytest.raises(KitError, match=r"second/fold0: finished with a different pipeline than this run"):
        fold_train(second, data, out_dir=tmp_path / "runs", folds="0,1")
    assert not (tmp_path / "runs" / "second" / "fold1").exists()  # refused before any work
    # The same pipeline on another fold split of the same images.
    other = tmp_path / "other"
    shutil.copytree(data, other, ignore=shutil.ignore_patterns(".kit_cache"))
    comp = Competition.load(other)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=1))
    shutil.copytree(tmp_path / "runs" / "first", tmp_path / "runs2" / "first")
    with pytest.raises(KitError, match=r"first/fold0: finished with a different split"):
        fold_train(first, other, out_dir=tmp_path / "runs2", folds="0")


def test_cli_refuses_an_escaping_run_name(data, tmp_path):
    path, _ = _pipeline(tmp_path, "p")
    out = tmp_path / "deep" / "runs"
    result = CliRunner().invoke(
        app, ["fold-train", str(path), "--data", str(data), "--out", str(out), *set_args([*TINY, "name=../../escape"])]
    )
    assert result.exit_code == 1
    assert "run name '../../escape'" in result.output and "no folders" in result.output
    assert not (tmp_path / "escape").exists() and not out.exists()


@pytest.mark.slow  # trains
@pytest.mark.parametrize(
    "bad, message",
    [
        (["--folds", "7"], "--folds '7': the split has 3 folds"),
        (["--set", "model.backbone=resnet999"], "unknown timm model 'resnet999'"),
        (["--nme-points", "36,100"], "--nme-points: point 100 out of range (the faces have 100 points"),
    ],
)
def test_bad_pipeline_fails_before_any_work_and_the_fix_starts_cleanly(data, tmp_path, bad, message):
    root = _fresh_copy(data, tmp_path)
    path, _ = _pipeline(tmp_path, "p")
    out = tmp_path / "runs"
    command = ["fold-train", str(path), "--data", str(root), "--out", str(out), *set_args(TINY)]
    result = CliRunner().invoke(app, [*command, *bad])
    assert result.exit_code == 1 and message in result.output, result.output
    assert _derived(root) == [] and not out.exists()  # no flip file, no caches, no claimed run
    result = CliRunner().invoke(app, [*command, "--folds", "0"])
    assert result.exit_code == 0, result.output
    assert RunDir(out / "p").read_fold(0) is not None


@pytest.mark.slow  # trains
def test_missing_image_fails_before_any_work_and_the_fixed_data_starts_cleanly(data, tmp_path):
    root = _fresh_copy(data, tmp_path)
    image = sorted((root / "train" / "images").iterdir())[4]
    moved = image.rename(tmp_path / image.name)
    _, pipeline = _pipeline(tmp_path, "p")
    with pytest.raises(KitError, match=rf"{image.name}: image file not found \(listed in .*landmarks.csv\)"):
        fold_train(pipeline, root, out_dir=tmp_path / "runs", folds="0")
    assert _derived(root) == [] and not (tmp_path / "runs").exists()
    moved.rename(image)
    assert fold_train(pipeline, root, out_dir=tmp_path / "runs", folds="0") is None  # fold 0 of 3 trained
    assert RunDir(tmp_path / "runs" / "p").read_fold(0) is not None


@pytest.mark.slow  # trains
def test_a_run_without_finished_folds_is_not_a_claim(data, tmp_path):
    _, old = _pipeline(tmp_path, "p", ["optim.lr=0.5"])
    run = RunDir(tmp_path / "runs" / "p")
    run.path.mkdir(parents=True)
    run.record(old, SplitInfo.of(Competition.load(data)), None)  # claimed, then stopped before finishing a fold
    _, fixed = _pipeline(tmp_path, "p")
    fold_train(fixed, data, out_dir=tmp_path / "runs", folds="0")
    assert run.read_pipeline() == fixed and run.read_fold(0) is not None


def test_lock_names_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / ".lock"
    live = os.getppid()  # the process that started the tests: alive, and not this one
    lock.write_text(json.dumps({"pid": live, "host": socket.gethostname(), "started": time.time()}))
    with pytest.raises(KitError, match=rf"fold 3 is being trained by process {live} on {socket.gethostname()}"):
        acquire_lock(lock, "fold 3")
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this id
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": time.time()}))
    acquire_lock(lock, "fold 3")  # its process is gone: a stale lock is taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_lock(lock)
    assert not lock.exists()


@pytest.mark.slow
def test_second_fold_train_on_the_same_run_is_refused_while_the_first_runs(data, tmp_path):
    path, pipeline = _pipeline(tmp_path, "locked")
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
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "runs" / "locked" / "fold0" / ".lock"
    try:
        deadline = time.time() + 120
        while not lock.is_file():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        with pytest.raises(KitError, match=rf"locked/fold0: fold 0 is being trained by process {first.pid} "):
            fold_train(pipeline, data, out_dir=tmp_path / "runs")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.is_file()  # kill -9 leaves its lock; the next run takes it over
    metrics = fold_train(pipeline, data, out_dir=tmp_path / "runs")
    assert metrics is not None and not lock.exists()
    identity = run_identity(pipeline, Competition.load(data), metrics.split, torch.device("cpu"))
    assert load_run(tmp_path / "runs" / "locked").metrics.identity == identity


@pytest.mark.slow  # trains
def test_corrupt_records_are_named(data, tmp_path):
    _, pipeline = _pipeline(tmp_path, "p")
    fold_train(pipeline, data, out_dir=tmp_path / "runs")
    run = RunDir(tmp_path / "runs" / "p")
    good = (run.path / "metrics.json").read_text()
    np.save(run.path / "test.npy", np.zeros((3, 7, 2), np.float32))
    with pytest.raises(KitError, match=r"p/test.npy: shape \(3, 7, 2\), expected \(rows, 100, 2\)"):
        load_run(run.path)
    (run.path / "test.npy").write_bytes(b"")  # empty: once just "Aborted." from kit blend
    result = CliRunner().invoke(app, ["blend", str(run.path), "--data", str(data), "--out-dir", str(tmp_path / "s")])
    assert result.exit_code == 1 and "p/test.npy: not a readable .npy file" in result.output
    assert "rerun kit fold-train (finished folds are kept)" in result.output
    (run.path / "metrics.json").write_text('{"oof_mse": 1}')
    with pytest.raises(KitError, match=r"p/metrics.json: invalid RunMetrics \(key 'name'"):
        load_run(run.path)
    (run.path / "metrics.json").write_text(good)
    (run.fold_dir(1) / "done.json").write_text("not json")
    with pytest.raises(KitError, match=r"fold1/done.json: unreadable"):
        run.read_fold(1)


def test_an_assembler_waits_for_another_one(tmp_path):
    import threading

    from kit.locks import wait_for_lock

    lock = tmp_path / ".lock"
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    lock.write_text(json.dumps(live))
    started = time.monotonic()
    with pytest.raises(KitError, match="the run is being trained by process"):
        wait_for_lock(lock, "the run", seconds=0.3, poll=0.05)
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.2, lock.unlink).start()  # the other assembler finishes
    wait_for_lock(lock, "the run", seconds=5, poll=0.05)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def _recorded_run(tmp_path):
    """An empty run of 5-point faces, recorded through the contract: (run, pipeline, split)."""
    split = SplitInfo(folds_sha256="f" * 64, train_names_sha256="a" * 64, test_names_sha256="b" * 64, n_points=5)
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmodel: {backbone: resnet18}\n")
    pipeline = load_pipeline(path)
    run = RunDir.under(tmp_path / "runs", "p")
    run.record(pipeline, split, None)
    return run, pipeline, split


def _assembled(tmp_path, nme_points=None):
    """A run written through the contract (no training): 3 folds of 4 faces, fold 1's faces 5 px off."""

    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 50, (12, 5, 2)).astype(np.float32)
    fold_of = np.arange(12) % 3
    oof = truth.copy()
    oof[fold_of == 1, 0] += np.array([3.0, 4.0], np.float32)  # point 0 of fold 1's faces: 5 px off
    run, pipeline, split = _recorded_run(tmp_path)
    write_finished_folds(
        run, pipeline, split, fold_of, oof, np.zeros((2, 5, 2)), lambda rows: np.mean((oof - truth)[rows] ** 2)
    )
    return run, run.assemble(pipeline, split, truth, fold_of, nme_points=nme_points), truth


@pytest.mark.parametrize("nme_points", [None, (1, 3)])
def test_assembly_records_the_nme_of_the_run_and_its_folds(tmp_path, nme_points):
    run, metrics, truth = _assembled(tmp_path, nme_points)
    if nme_points is None:  # the face box
        extent = truth.max(axis=1) - truth.min(axis=1)
        sizes = np.sqrt(extent[:, 0] * extent[:, 1])
    else:
        sizes = np.hypot(*(truth[:, 1] - truth[:, 3]).T)
    per_face = np.where(np.arange(12) % 3 == 1, 100 * (5 / 5) / sizes, 0.0)  # 5 px on 1 of 5 points
    on_disk = json.loads(run.metrics_file.read_text())
    assert on_disk["oof_nme"] == pytest.approx(per_face.mean()) == metrics.oof_nme
    assert on_disk["oof_failure_rate"] == pytest.approx(100 * np.mean(per_face > 10)) == metrics.oof_failure_rate
    assert on_disk["nme_points"] == (list(nme_points) if nme_points else None)
    assert [f["nme"] for f in on_disk["folds"]] == pytest.approx([0.0, per_face[1::3].mean(), 0.0])
    assert on_disk["folds"][1]["failure_rate"] == pytest.approx(100 * np.mean(per_face[1::3] > 10))
    assert load_run(run.path).metrics == metrics


@pytest.mark.parametrize("chunk_bytes", [None, 3 * 5 * 2 * 4])  # one chunk; 3 rows a chunk
def test_assembly_streams_in_row_chunks_what_a_whole_array_assembly_gives(tmp_path, monkeypatch, chunk_bytes):
    import kit.io
    from kit.metrics import landmark_scores

    monkeypatch.setattr(kit.io, "CHUNK_BYTES", chunk_bytes or kit.io.CHUNK_BYTES)
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 50, (13, 5, 2)).astype(np.float32)
    np.save(tmp_path / "truth.npy", truth)
    fold_of = rng.permutation(np.arange(13) % 3)  # folds interleaved irregularly
    oof = truth + rng.normal(0, 2, truth.shape).astype(np.float32)
    tests = rng.uniform(0, 50, (3, 4, 5, 2)).astype(np.float32)
    run, pipeline, split = _recorded_run(tmp_path)
    write_finished_folds(run, pipeline, split, fold_of, oof, list(tests))
    drawn = []

    def report(path, summaries, written, scores):
        drawn.append((np.array(written), scores))

    advanced = []

    @contextlib.contextmanager
    def progress(total, description):
        advanced.append(total)
        yield advanced.append

    labels = np.load(tmp_path / "truth.npy", mmap_mode="r")
    metrics = run.assemble(pipeline, split, labels, fold_of, report=report, progress=progress)
    np.testing.assert_array_equal(np.load(run.path / "oof.npy"), oof)
    np.testing.assert_array_equal(np.load(run.path / "test.npy"), tests.mean(axis=0))  # bit for bit
    scores = landmark_scores(oof, truth)
    assert metrics.oof_mse == pytest.approx(scores.mse, rel=1e-9)
    assert (metrics.oof_nme, metrics.oof_failure_rate) == pytest.approx((scores.nme, scores.failure_rate))
    assert [f.nme for f in metrics.folds] == pytest.approx(
        [landmark_scores(oof[fold_of == f], truth[fold_of == f]).nme for f in range(3)]
    )
    np.testing.assert_array_equal(drawn[0][0], oof)
    assert drawn[0][1].mse == metrics.oof_mse
    assert advanced[0] == 13 + 4 and sum(advanced[1:]) == 13 + 4
    assert len(advanced) == 1 + (2 if chunk_bytes is None else 5 + 2)
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith(".") and p.name != ".lock") == []


def test_records_of_older_kits_load_without_nme(tmp_path):
    run, _, _ = _assembled(tmp_path)
    old = json.loads(run.metrics_file.read_text())
    for key in ("oof_nme", "oof_failure_rate", "nme_points"):
        del old[key]
    for fold in old["folds"]:
        del fold["nme"], fold["failure_rate"]
    run.metrics_file.write_text(json.dumps(old))
    metrics = load_run(run.path).metrics
    assert (metrics.oof_nme, metrics.oof_failure_rate, metrics.nme_points) == (None, None, None)
    assert metrics.folds[1].nme is None and metrics.oof_mse > 0
    done = json.loads((run.fold_dir(1) / "done.json").read_text())
    assert "nme" in done  # written by this kit: None for a summary built without it
    del done["nme"], done["failure_rate"]
    (run.fold_dir(1) / "done.json").write_text(json.dumps(done))
    assert run.read_fold(1).nme is None


def test_fold_train_prints_the_nme_beside_the_mse_and_passes_nme_points(tmp_path, monkeypatch):
    import kit.train

    _, metrics, _ = _assembled(tmp_path, (1, 3))
    seen = {}

    def fake_fold_train(pipeline, data, **kwargs):
        seen.update(kwargs)
        return metrics

    monkeypatch.setattr(kit.train, "fold_train", fake_fold_train)
    path = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["fold-train", str(path), "--data", str(tmp_path), "--nme-points", "1,3"])
    assert result.exit_code == 0, result.output
    assert seen["nme_points"] == (1, 3)
    line = f"OOF MSE {metrics.oof_mse:.4f}  NME {metrics.oof_nme:.2f}%  >10%: {metrics.oof_failure_rate:.1f}%"
    assert result.output.splitlines()[-1] == line
    result = CliRunner().invoke(app, ["fold-train", str(path), "--data", str(tmp_path), "--nme-points", "1;3"])
    assert result.exit_code == 1 and "--nme-points '1;3': expected two point numbers A,B" in result.output
