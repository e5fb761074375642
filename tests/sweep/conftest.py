"""Fixtures of the sweep tests: a tiny competition, and the two-run sweep trained once by the local executor.

The helpers are in ``sweep_helpers.py`` and ``tests/tiny.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import EPOCHS, TINY, TWO_PIPELINES, TWO_RUN_SWEEP, write_sweep
from tiny import run_kit, set_args

from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.synth import generate_competition


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory) -> Path:
    """24 training and 4 test images of 100 points, split in 3 folds."""
    root = tmp_path_factory.mktemp("sweep_comp") / "comp"
    generate_competition(root, n_train=24, n_test=4, seed=7, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    return root


@pytest.fixture(scope="session")
def local_sweep(sweep_data, tmp_path_factory):
    """The two-run sweep trained by the local executor, two CPU jobs at a time: (folder, completed process)."""
    folder = tmp_path_factory.mktemp("local_sweep")
    path = write_sweep(folder, TWO_RUN_SWEEP, TWO_PIPELINES)
    args = [str(path), "--data", str(sweep_data), "--out", str(folder / "runs"), "--jobs", "2"]
    # tracked in the embedded MLflow store: two concurrent jobs log their folds to it
    done = run_kit("sweep", *args, "--submissions", str(folder / "subs"), "--track", "mlflow", *set_args(TINY + EPOCHS))
    return folder, done
