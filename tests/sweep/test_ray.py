"""The Ray executor on a real two-node cluster: the second node dies mid-sweep, its job resumes on the head, and
the sweep ends with the same predictions as the local executor."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from ray_cluster import WORKER_HOST, LocalRayCluster, available
from sweep_helpers import EPOCHS, TINY, TWO_PIPELINES, TWO_RUN_SWEEP, write_sweep
from tiny import kit_command, set_args

from kit.progress import EpochRecord
from kit.sweep.job import Start, read_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]


def _job_on_worker_in_training(logs: Path) -> Path | None:
    """The log of a job whose current attempt runs on the second node and has finished two epochs."""
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        text = log.read_text(errors="replace")
        attempt = text[text.rfind('#sweep {"event": "start"') :].splitlines()
        head = read_event(attempt[0]) if attempt else None
        epochs = sum(isinstance(read_event(line), EpochRecord) for line in attempt)
        if isinstance(head, Start) and head.host == WORKER_HOST and epochs >= 2:
            return log
    return None


def test_a_job_whose_node_dies_resumes_on_another_node_with_the_same_results(local_sweep, sweep_data, tmp_path):
    reference, local = local_sweep
    assert local.returncode == 0, local.stderr
    folder = tmp_path / "sweep"
    path = write_sweep(folder, TWO_RUN_SWEEP, TWO_PIPELINES)
    runs, logs = folder / "runs", folder / "runs" / ".sweep" / "logs"
    with LocalRayCluster(tmp_path / "ray", cpus=(1, 1)) as cluster:
        command = kit_command(
            "sweep", str(path), "--data", str(sweep_data), "--out", str(runs), "--submissions", str(folder / "subs"),
            "--executor", "ray", "--address", cluster.address, "--retries", "2", *set_args(TINY + EPOCHS),
        )  # fmt: skip
        out = tmp_path / "sweep.out"
        sweep = cluster.popen(command, out, env=os.environ | {"COLUMNS": "200"})
        try:
            deadline, killed = time.monotonic() + 240, None
            while sweep.poll() is None and killed is None and time.monotonic() < deadline:
                killed = _job_on_worker_in_training(logs)
                time.sleep(0.05)
            assert killed is not None, out.read_text()
            cluster.kill_worker_node()
            sweep.wait(timeout=300)
        finally:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
    text = out.read_text()
    assert sweep.returncode == 0, text
    run, fold = killed.name.removesuffix(".log").rsplit(".fold", 1)
    assert f"{run} fold {fold}: running on node " in text and "(attempt 2)" in text
    assert "took over" in text and f"on {WORKER_HOST}" in text  # the dead node's lock: another host's
    record = json.loads((runs / ".sweep" / "jobs" / killed.name.replace(".log", ".json")).read_text())
    assert record["state"] == "done" and record["attempt"] == 2 and record["host"] != WORKER_HOST
    resumed = killed.read_text().split('#sweep {"event": "start"')[-1]
    first = next(line for line in resumed.splitlines() if line.startswith(f"fold {fold} epoch "))
    assert not first.startswith(f"fold {fold} epoch 1/"), "resumed from the dead attempt's checkpoint"
    for name in ("tiny_a", "tiny_b"):
        for array in ("oof.npy", "test.npy"):
            np.testing.assert_allclose(
                np.load(runs / name / array), np.load(reference / "runs" / name / array), rtol=0, atol=1e-5
            )
