"""A tiny competition and tiny pipelines for sweep tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.synth import generate_competition

TINY = [
    "model.backbone=test_resnet",
    "input.size=32",
    "input.pad=4",
    "train.batch_size=8",
    "train.epochs=1",
    "train.num_workers=0",
    "train.report_images=0",
    "model.pretrained.source=none",
]


def set_args(extra=()) -> list[str]:
    """``--set`` arguments: the tiny overrides, then ``extra``."""
    return sum((["--set", item] for item in [*TINY, *extra]), [])


def write_sweep(folder: Path, text: str, pipelines: dict[str, str]) -> Path:
    """``folder/sweep.yaml`` with ``text``, beside pipeline files ``{file name: YAML}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in pipelines.items():
        (folder / name).write_text(body)
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


TWO_PIPELINES = {
    "tiny_a.yaml": "name: tiny_a\n",
    "tiny_b.yaml": "name: tiny_b\noptim: {lr: 3.0e-3}\n",
}
TWO_RUN_SWEEP = (
    "pipelines:\n  - pipeline: tiny_a.yaml\n  - pipeline: tiny_b.yaml\nblend: {method: weights, name: tiny}\n"
)


def kit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kit", *args]


def run_kit(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "200"}
    return subprocess.run(kit_command(*args), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory) -> Path:
    """24 training and 4 test images of 100 points, split in 3 folds."""
    root = tmp_path_factory.mktemp("sweep_comp") / "comp"
    generate_competition(root, n_train=24, n_test=4, seed=7, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    return root


EPOCHS = ["train.epochs=40"]  # long enough for a job to be stopped or killed in the middle of its training


@pytest.fixture(scope="session")
def local_sweep(sweep_data, tmp_path_factory):
    """The two-run sweep trained by the local executor, two CPU jobs at a time: (folder, completed process)."""
    folder = tmp_path_factory.mktemp("local_sweep")
    path = write_sweep(folder, TWO_RUN_SWEEP, TWO_PIPELINES)
    args = [str(path), "--data", str(sweep_data), "--out", str(folder / "runs"), "--jobs", "2"]
    # tracked in the embedded MLflow store: two concurrent jobs log their folds to it
    done = run_kit("sweep", *args, "--submissions", str(folder / "subs"), "--track", "mlflow", *set_args(EPOCHS))
    return folder, done
