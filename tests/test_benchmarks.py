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
