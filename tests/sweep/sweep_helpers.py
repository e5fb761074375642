"""Helpers of the sweep tests (imported by name, as ``sweep_helpers``): the tiny sweep settings, sweep files."""

from __future__ import annotations

from pathlib import Path

from tiny import tiny_settings

# the tiny ``--set`` overrides of the sweep tests: no pretrained weights, augmentation as configured
TINY = tiny_settings({"model.pretrained.source": "none"}, drop=("augment.blur", "augment.noise"))

EPOCHS = ["train.epochs=40"]  # long enough for a job to be stopped or killed in the middle of its training

TWO_PIPELINES = {
    "tiny_a.yaml": "name: tiny_a\n",
    "tiny_b.yaml": "name: tiny_b\noptim: {lr: 3.0e-3}\n",
}
TWO_RUN_SWEEP = (
    "pipelines:\n  - pipeline: tiny_a.yaml\n  - pipeline: tiny_b.yaml\nblend: {method: weights, name: tiny}\n"
)


def write_sweep(folder: Path, text: str, pipelines: dict[str, str]) -> Path:
    """``folder/sweep.yaml`` with ``text``, beside pipeline files ``{file name: YAML}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in pipelines.items():
        (folder / name).write_text(body)
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path
