"""The benchmark scripts keep working: the GPU suite runs its tiny CPU mode end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gpu_suite_tiny_prints_every_row_with_its_target(tmp_path):
    out = tmp_path / "suite.json"
    env = os.environ | {"PY": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    what = [row["what"] for row in rows]
    for expected in (
        "resnet34 regression 128 px, batch 1024: full loop",
        "  full loop / model step",
        "Unet(resnet34) stride 4, L2, batch 256: full loop",
        "  Adaptive Wing / L2 (model step)",
        "  KL (the pipeline's loss) / L2 (model step)",
        "resnet34 inference with flip TTA, batch 1024",
    ):
        assert expected in what
        assert expected in result.stdout
    assert all(row["value"] > 0 for row in rows)
    ratio = next(row for row in rows if row["what"] == "  full loop / model step")
    assert ratio["target"] == 0.9 and ratio["verdict"] in ("ok", "BELOW")


@pytest.mark.slow
def test_recipe_trial_records_oof_private_and_wall_time(tmp_path):
    from kit.data.competition import Competition
    from kit.data.folds import make_folds, write_folds
    from kit.synth import generate_competition

    data = tmp_path / "comp"
    generate_competition(data, n_train=12, n_test=3, seed=3, n_points=60, n_requested=10)
    comp = Competition.load(data)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        "name: tiny\nmodel: {family: regression, backbone: test_resnet, pretrained: {source: none}}\n"
        "input: {size: 32, pad: 4}\ntrain: {epochs: 1, batch_size: 4, num_workers: 0, report_images: 0}\n"
    )
    out = tmp_path / "trials"
    env = os.environ | {"KIT": str(Path(sys.executable).parent / "kit"), "PY": sys.executable}
    script = str(ROOT / "benchmarks" / "recipe_trial.sh")
    args = [str(data), str(out), "tiny_lr", str(pipeline), "optim.lr=3.0e-3"]
    result = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    label, oof, nme, fail, private, seconds, overrides = (out / "trials.tsv").read_text().rstrip("\n").split("\t")
    metrics = json.loads((out / "runs" / "tiny_lr" / "metrics.json").read_text())
    assert (label, overrides) == ("tiny_lr", "optim.lr=3.0e-3")
    assert float(oof) == pytest.approx(metrics["oof_mse"], abs=0.01)
    assert float(nme) == pytest.approx(metrics["oof_nme"], abs=0.01) and 0 <= float(fail) <= 100
    assert float(private) > 0 and int(seconds) >= 0
    assert "lr: 0.003" in (out / "runs" / "tiny_lr" / "pipeline.yaml").read_text()


def _fake_300w(root: Path) -> None:
    """A tiny 300-W layout: afw/ and helen/trainset/ with PHOTO_K.jpg + PHOTO_K.pts faces of 68 iBUG points."""
    import cv2
    import numpy as np
    from shapes import ibug68_layout

    rng = np.random.default_rng(0)
    for i in range(24):
        angle = np.deg2rad(rng.uniform(-10, 10))
        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        points = ibug68_layout() @ rotation * rng.uniform(50, 70) + 130 + rng.normal(0, 0.5, (68, 2))
        folder = root / ("afw" if i < 12 else "helen/trainset")
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{100 + i // 2}_{i % 2 + 1}"
        image = rng.integers(0, 80, (240, 260, 3), dtype=np.uint8)
        for x, y in points:
            cv2.circle(image, (round(x), round(y)), 2, (255, 255, 255), -1)
        cv2.imwrite(str(folder / f"{stem}.jpg"), image)
        (folder / f"{stem}.pts").write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in points))


@pytest.mark.slow
def test_real_faces_script_imports_sweeps_and_stacks(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    _fake_300w(photos)
    env = os.environ | {
        "KIT": str(Path(sys.executable).parent / "kit"),
        "KIT_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    tiny = ["input.size=32", "train.epochs=1", "train.max_train_batches=1", "train.report_images=0"]
    args = [str(photos), str(out), *[a for kv in tiny for a in ("--set", kv)]]
    script = str(ROOT / "benchmarks" / "real_faces.sh")
    result = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (out / "dev" / "nme_points.txt").read_text().split() == ["36", "45"]
    assert (out / "dev" / "train" / "groups.csv").is_file()
    for run in ("real_regression", "real_heatmap"):
        metrics = json.loads((out / "runs" / run / "metrics.json").read_text())
        assert metrics["nme_points"] == [36, 45] and metrics["oof_nme"] > 0
    stack = json.loads((out / "submissions" / "real_stack.json").read_text())
    assert stack["nme_points"] == [36, 45]
    assert "stack, nested CV" in result.stdout and "total wall time" in result.stdout
    assert "stack, private test" in result.stdout and "MSE " in result.stdout


SCALE_STEPS = (
    "build check folds prepare fold_train make_runs blend3_mean blend3_weights blend3_per-point blend3_hill-climb "
    "stack3_ridge stack3_pca-ridge runs_50 validate score submit_dry_run infer_1000 pseudo_fold0"
).split()


@pytest.mark.slow
def test_scale_script_runs_every_step_and_reports_growth(tmp_path):
    out = tmp_path / "scale"
    env = os.environ | {
        "KIT": str(Path(sys.executable).parent / "kit"),
        "PY": sys.executable,
        "SCALE_OUT": str(out),
        "SCALE_SOURCE_TRAIN": "24",
        "SCALE_SOURCE_TEST": "6",
        "SCALE_ENSEMBLES": "3",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "scale.sh"), "30", "9", "60", "12"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for n_train, n_test in ((30, 9), (60, 12)):
        rows = [line.split("\t") for line in (out / str(n_train) / "steps.tsv").read_text().splitlines()[1:]]
        assert [row[0] for row in rows] == SCALE_STEPS
        assert all(row[-1] == "0" and float(row[1]) >= 0 and float(row[2]) > 0 for row in rows), rows
        data = out / str(n_train) / "data"
        # Every row of the built competition is a valid copy of a source row, under its own name.
        labels = (data / "train" / "landmarks.csv").read_text().splitlines()
        assert len(labels) == n_train + 1 and labels[25].split("\t", 1)[1] == labels[1].split("\t", 1)[1]
        assert len((data / "test" / "test_points.csv").read_text().splitlines()) == n_test + 1
        assert (data / "train" / "images" / "0000024.jpg").stat().st_ino == (
            data / "train" / "images" / "0000000.jpg"
        ).stat().st_ino
        assert len((out / str(n_train) / "infer.csv").read_text().splitlines()) == n_test + 1
    # The growth table of the two sizes: a time exponent for the steps slow enough to read it from.
    growth = result.stdout[result.stdout.index("== growth ==") :]
    assert "time exp" in growth and "fold_train" in growth
