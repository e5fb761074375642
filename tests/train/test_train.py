"""fold-train end to end on a tiny synthetic competition: artifacts, resume after kill -9, DDP, bench."""

import contextlib
import json
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
from kit.data.folds import load_folds, make_folds, write_folds
from kit.errors import KitError
from kit.metrics import landmark_scores, mse
from kit.progress import (
    PROGRESS_FD,
    EpochRecord,
    ErrorRecord,
    FoldRecord,
    RecordSink,
    RunRecord,
    SilentReporter,
    read_record,
)
from kit.runs import RunDir, SplitInfo, load_run
from kit.synth import generate_competition
from kit.train import fold_train
from kit.train.plan import plan_run
from kit.train.run import run_identity

pytestmark = pytest.mark.slow  # trains models

TINY = tiny_settings({"train.epochs": 2, "train.report_images": 2, "optim.lr": "3e-3"})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("comp") / "c"
    generate_competition(root, n_train=24, n_test=6, seed=3, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    return root


def _pipeline(tmp_path: Path, name: str, extra: list[str] = ()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{pretrained: {{source: none}}}}\n")
    return path, load_pipeline(path, TINY + list(extra))


class _Messages(SilentReporter):
    def __init__(self):
        self.lines = []
        self.bars: dict[str, list[int]] = {}  # description -> [total, rows advanced]

    def message(self, text: str) -> None:
        self.lines.append(text)

    @contextlib.contextmanager
    def progress(self, total: int, description: str):
        bar = self.bars.setdefault(description, [total, 0])

        def advance(n: int = 1) -> None:
            bar[1] += n

        yield advance


def test_fold_train_writes_the_run_contract(tiny_data, tmp_path):
    _, pipeline = _pipeline(tmp_path, "tiny", ["tta.hflip=true"])
    reporter = _Messages()
    metrics = fold_train(pipeline, tiny_data, out_dir=tmp_path / "runs", reporter=reporter, nme_points=(3, 40))
    run = tmp_path / "runs" / "tiny"
    comp = Competition.load(tiny_data)
    oof, test = np.load(run / "oof.npy"), np.load(run / "test.npy")
    assert oof.shape == (24, 100, 2) and oof.dtype == np.float32
    assert test.shape == (6, 100, 2) and test.dtype == np.float32
    # The final predictions show progress, every image counted once: the fold's OOF rows and the test set.
    folds = load_folds(comp.folds_csv, comp.train.file_names)
    for fold in range(3):
        assert reporter.bars[f"fold {fold} OOF predictions"] == [int((folds == fold).sum())] * 2
        assert reporter.bars[f"fold {fold} test predictions"] == [6, 6]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["oof_mse"] == pytest.approx(mse(oof, comp.train.points), rel=1e-6) == metrics.oof_mse
    # NME beside the MSE, with the face size of the points asked for, in the run, each fold and the final line
    scores = landmark_scores(oof, comp.train.points, (3, 40))
    assert (on_disk["oof_nme"], on_disk["oof_failure_rate"]) == pytest.approx((scores.nme, scores.failure_rate))
    assert on_disk["nme_points"] == [3, 40] and all(f["nme"] > 0 for f in on_disk["folds"])
    assert RunDir(run).read_fold(0).nme == pytest.approx(on_disk["folds"][0]["nme"])
    assert f"NME {scores.nme:.2f}%" in reporter.lines[-1] and "(points 3-40)" in reporter.lines[-1]
    assert [f["fold"] for f in on_disk["folds"]] == [0, 1, 2]
    assert on_disk["split"] == SplitInfo.of(comp).to_dict()
    identity = run_identity(pipeline, comp, SplitInfo.of(comp), torch.device("cpu"))
    assert on_disk["identity"] == identity.model_dump(mode="json")
    assert identity.labels_sha256 == comp.train.digest and identity.numerics.threads == torch.get_num_threads()
    # every fold records what produced it, and the run reads back through the contract
    for fold in range(3):
        summary = RunDir(run).read_fold(fold)
        assert summary.identity == identity and len(summary.history) == 2
    assert load_run(run).metrics == metrics
    assert (run / "report.png").stat().st_size > 1000
    assert (run / "pipeline.yaml").is_file() and (run / "split.json").is_file()
    # test predictions are the mean of the fold predictions
    folds = np.stack([np.load(run / f"fold{k}" / "test.npy") for k in range(3)])
    np.testing.assert_allclose(test, folds.mean(0), rtol=1e-5)
    # predictions land on the faces: far better than guessing the image centre
    centre = np.zeros_like(oof)
    assert mse(oof, comp.train.points) < mse(centre, comp.train.points) / 10


def _records(work) -> list:
    """The records ``work(sink)`` writes to a progress pipe (as under kit sweep), read back."""
    read_end, write_end = os.pipe()
    try:
        work(RecordSink(write_end))
    finally:
        os.close(write_end)
    with open(read_end, "rb") as stream:
        return [read_record(line) for line in stream]


def test_rerun_skips_finished_folds_and_refuses_a_changed_pipeline(tiny_data, tmp_path):
    path, pipeline = _pipeline(tmp_path, "again")
    records = _records(lambda sink: fold_train(pipeline, tiny_data, out_dir=tmp_path / "runs", folds="0", records=sink))
    done = tmp_path / "runs" / "again" / "fold0" / "done.json"
    stamp = done.stat().st_mtime_ns
    assert not (tmp_path / "runs" / "again" / "oof.npy").exists()  # folds 1, 2 still missing
    mse0 = RunDir(tmp_path / "runs" / "again").read_fold(0).mse
    assert [(type(r), getattr(r, "state", None)) for r in records] == [
        (FoldRecord, "started"),
        (EpochRecord, None),
        (EpochRecord, None),
        (FoldRecord, "done"),
        (RunRecord, None),
    ]
    assert [(r.epoch, r.epochs) for r in records[1:3]] == [(1, 2), (2, 2)] and records[3].mse == mse0
    assert records[4] == RunRecord(name="again", oof_mse=None, missing=(1, 2))
    # what a sweep plans for the run is what fold-train does with it
    plan = plan_run(pipeline, Competition.load(tiny_data), tmp_path / "runs")
    assert plan.folds.to_train == (1, 2) and list(plan.folds.finished) == [0] and plan.finished_metrics() is None
    assert plan_run(pipeline, Competition.load(tiny_data), tmp_path / "runs", folds="0").folds.skipped == (0,)

    def cli(sink: RecordSink, *extra: str):
        args = ["fold-train", str(path), "--data", str(tiny_data), "--out", str(tmp_path / "runs"), "--folds", "0"]
        args += [*set_args(TINY), *extra]
        return CliRunner().invoke(app, args, env={PROGRESS_FD: str(sink.fd)})

    outputs = []
    records = _records(lambda sink: outputs.append(cli(sink)))
    assert outputs[0].exit_code == 0, outputs[0].output
    assert "fold 0: done, skipped" in outputs[0].output  # what a person reads is unchanged
    assert records[0] == FoldRecord(fold=0, state="skipped", mse=mse0)
    assert done.stat().st_mtime_ns == stamp
    records = _records(lambda sink: outputs.append(cli(sink, "--set", "optim.lr=0.1")))
    assert outputs[1].exit_code == 1
    assert "fold0: finished with a different pipeline" in outputs[1].output
    [error] = records
    assert isinstance(error, ErrorRecord) and f"error: {error.text}" in outputs[1].output  # the same one line


def test_kill_9_mid_fold_then_resume(tiny_data, tmp_path):
    path, _ = _pipeline(tmp_path, "killed")
    args = [
        sys.executable,
        "-m",
        "kit",
        "fold-train",
        str(path),
        "--data",
        str(tiny_data),
        "--out",
        str(tmp_path / "runs"),
        *set_args(TINY),
        "--set",
        "train.epochs=30",
    ]
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        # Wait until fold 0 is finished and fold 1 has saved a checkpoint: then kill -9 in the middle of fold 1.
        while not (run / "fold1" / "last.pt").is_file():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done0 = (run / "fold0" / "done.json").stat().st_mtime_ns
    assert not (run / "fold1" / "done.json").exists()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "fold 0: done, skipped" in resumed.stdout
    assert "fold 1: resuming after epoch" in resumed.stdout
    assert (run / "fold0" / "done.json").stat().st_mtime_ns == done0
    history = json.loads((run / "fold1" / "done.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(30))
    assert np.load(run / "oof.npy").shape == (24, 100, 2)
    assert not list(run.rglob("*.tmp"))  # no half-written artifact left behind


def test_two_process_ddp_on_cpu(tiny_data, tmp_path):
    path, _ = _pipeline(tmp_path, "ddp")
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "kit",
            "fold-train",
            str(path),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "runs"),
            "--folds",
            "0",
            *set_args(TINY),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = RunDir(tmp_path / "runs" / "ddp").read_fold(0)
    # Both ranks trained together: each saw half the rows per epoch, and their weights ended equal (checked by
    # fold-train after training; a rank that never synchronised would have failed the run).
    assert summary.world_size == 2 and len(summary.history) == 2 and np.isfinite(summary.mse)
    per_rank_batches = -(-summary.n_train // 2) // 8  # DistributedSampler pads to equal shards; drop_last batches
    assert summary.history[0].train_images == per_rank_batches * 8
    assert RunDir(tmp_path / "runs" / "ddp").fold_predictions(0, 100)[0].shape == (summary.n_valid, 100, 2)


@pytest.mark.parametrize("gpu_augment", [False, True])
def test_bench_measures_three_stages(tiny_data, tmp_path, gpu_augment):
    from kit.train.bench import bench

    _, pipeline = _pipeline(tmp_path, "bench", [f"augment.gpu={str(gpu_augment).lower()}"])
    result = bench(pipeline, tiny_data, batches=3, warmup=1)
    # Each stage timed exactly the batches asked for (the 24-image demo is cycled), after its warm-up.
    assert result["input_images"] == result["model_images"] == result["full_loop_images"] == 3 * 8
    assert result["batch_size"] == 8 and result["input_size"] == 32 and result["n_points"] == 100
    for stage in ("input", "model", "full_loop"):
        assert 0 < result[f"{stage}_images_per_second"] < float("inf")
    assert result["full_vs_model"] == pytest.approx(
        result["full_loop_images_per_second"] / result["model_images_per_second"]
    )
    assert result["peak_rss_gib"] > 0.05  # a process with torch loaded holds far more than 50 MB


def test_gpu_augment_path_trains(tiny_data, tmp_path):
    _, pipeline = _pipeline(tmp_path, "gpuaug", ["augment.gpu=true", "train.epochs=3"])
    metrics = fold_train(pipeline, tiny_data, out_dir=tmp_path / "runs", folds="all")
    comp = Competition.load(tiny_data)
    oof = np.load(tmp_path / "runs" / "gpuaug" / "oof.npy")
    # Learned from device-augmented batches: far better than guessing the image centre, like the CPU path.
    assert metrics.oof_mse < mse(np.zeros_like(oof), comp.train.points) / 10


def test_asymmetric_layout_trains_without_flips_and_names_the_fix_with_them(make_competition, tmp_path):
    comp = make_competition(n_train=9, n_test=2, n_points=12)
    rng = np.random.default_rng(0)
    layout = np.stack([np.geomspace(2, 30, 12), np.linspace(3, 36, 12) ** 1.3 / 3], axis=1)  # a curve, not symmetric
    points = np.rint(layout + rng.normal(0, 0.5, size=(9, 12, 2))).astype(int)
    lines = ["\t".join(["file_name", *[f"Point_M{i}_{a}" for i in range(12) for a in "XY"]])]
    lines += ["\t".join([name, *map(str, p.reshape(-1))]) for name, p in zip(comp.train_names, points, strict=True)]
    comp.train_csv.write_text("\n".join(lines) + "\n")
    write_folds(comp.root / "folds.csv", make_folds(np.array(comp.train_names), k=3, seed=0))
    _, flipping = _pipeline(tmp_path, "flips", ["augment.hflip=0.5"])
    with pytest.raises(KitError, match="not mirror-symmetric.*augment.hflip=0 and tta.hflip=false"):
        fold_train(flipping, comp.root, out_dir=tmp_path / "runs")
    _, plain = _pipeline(tmp_path, "plain", ["augment.hflip=0", "tta.hflip=false", "train.epochs=1"])
    metrics = fold_train(plain, comp.root, out_dir=tmp_path / "runs")
    assert np.load(tmp_path / "runs" / "plain" / "oof.npy").shape == (9, 12, 2) and np.isfinite(metrics.oof_mse)
