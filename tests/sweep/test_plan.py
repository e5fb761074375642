"""A sweep plans each run as fold-train does (``kit.train.plan``): a pseudo-labelled run included."""

import os
import re
import signal
import subprocess
import time

import pytest
from sweep_helpers import TINY, write_sweep
from tiny import kit_command, run_kit, set_args

from kit.config import load_pipeline
from kit.data.competition import Competition
from kit.runs import load_run
from kit.sweep.records import pipeline_file
from kit.train.plan import plan_run

NO_EPOCHS = [item for item in TINY if not item.startswith("train.epochs=")]  # each sweep entry sets its own


def _folds(out: str, run: str, what: str) -> set[int]:
    return {int(fold) for fold in re.findall(rf"{run} fold (\d+): {what}", out)}


@pytest.mark.slow  # trains models in child processes
def test_a_pseudo_run_is_stopped_and_resumed_with_the_folds_fold_train_plans(sweep_data, tmp_path):
    runs = tmp_path / "runs"
    source = tmp_path / "tiny_a.yaml"
    source.write_text("name: tiny_a\n")
    trained = run_kit("fold-train", str(source), "--data", str(sweep_data), "--out", str(runs), *set_args(TINY))
    assert trained.returncode == 0, trained.stderr
    path = write_sweep(
        tmp_path,
        "pipelines:\n"
        "  - {pipeline: tiny_a.yaml, set: [train.epochs=1]}\n"  # the source, finished by the fold-train above
        "  - {pipeline: tiny_p.yaml, set: [train.epochs=20]}\n",
        {"tiny_p.yaml": f"name: tiny_p\npseudo: {{source: {runs / 'tiny_a'}}}\n"},
    )
    args = [str(path), "--data", str(sweep_data), "--out", str(runs), "--jobs", "1", *set_args(NO_EPOCHS)]
    sweep = subprocess.Popen(
        kit_command("sweep", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    try:
        deadline, lines = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            line = sweep.stdout.readline()
            lines.append(line)
            if "tiny_p fold 1: epoch " in line or not line:  # fold 0 is done, fold 1 is training
                break
        sweep.send_signal(signal.SIGINT)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    out = "".join(lines) + out
    assert sweep.returncode == 130, out + err
    assert _folds(out, "tiny_a", "finished earlier, skipped") == {0, 1, 2}
    assert "tiny_p fold 0: done" in out  # the sweep counts the pseudo run's folds as fold-train finished them

    plan = plan_run(load_pipeline(pipeline_file(runs, "tiny_p")), Competition.load(sweep_data), runs)
    assert plan.pipeline.pseudo.source_sha256 is not None  # resolved as fold-train resolves it
    assert 0 in plan.folds.finished and 1 in plan.folds.to_train  # fold 1 was stopped

    done = run_kit("sweep", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _folds(done.stdout, "tiny_p", "running on") == set(plan.folds.to_train)
    assert _folds(done.stdout, "tiny_p", "finished earlier, skipped") == set(plan.folds.finished)
    assert "fold 1: resuming after" in (runs / ".sweep" / "logs" / "tiny_p.fold1.log").read_text()
    assert "tiny_p: finished, OOF MSE" in done.stdout and re.search(r"tiny_p\s+│\s+finished", done.stdout)
    assert load_run(runs / "tiny_p").metrics.lineage == (str((runs / "tiny_a").resolve()),)
    after = plan_run(plan.pipeline, Competition.load(sweep_data), runs)
    assert after.folds.to_train == () and after.finished_metrics() is not None
