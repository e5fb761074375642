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
