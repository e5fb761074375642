"""Every GPU figure the kit promises, measured in one run and printed as one table with the targets beside them.

Usage: ``python benchmarks/gpu_suite.py [--tiny] [--data DIR] [--json FILE]`` (or ``benchmarks/gpu_suite.sh``).
On a GPU it writes a synth competition (2,048 images: batches are cycled), then measures, with ``kit bench``'s
stages: resnet34 regression at 128 px and batch 1024 (full loop vs model step), the stride-4 heatmap model with
L2 and Adaptive Wing, resnet34 inference with flip TTA, and the other families' GPU pipelines. ``--tiny`` runs
the same code on CPU in seconds (test models, 32 px): the tests run it that way, so the script keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kit.config import load_pipeline  # noqa: E402
from kit.data.competition import Competition  # noqa: E402
from kit.data.dataset import CropDataset  # noqa: E402
from kit.data.prepare import prepare_crops  # noqa: E402
from kit.predict.tta import inference_loader, predict_points  # noqa: E402
from kit.train.bench import bench  # noqa: E402

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@dataclass
class Row:
    what: str
    value: float  # images/s, or a ratio
    unit: str
    target: float | None = None
    peak_gib: float | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.value >= self.target else "BELOW"


def _pipeline(name: str, tiny: bool, overrides: list[str]):
    """A shipped pipeline, offline (no hub weights on the device machine), shrunk to test models with ``tiny``."""
    base = ["model.pretrained.source=none", "train.num_workers=4"]
    if tiny:
        base += ["input.size=32", "input.pad=4", "train.batch_size=8", "train.num_workers=0", "train.amp=false"]
    pipeline = load_pipeline(PIPELINES / f"{name}.yaml", base + overrides)
    if tiny:  # the same family, with timm's tiny test backbone
        backbone = "tu-test_resnet" if pipeline.model.backbone.startswith("tu-") else "test_resnet"
        pipeline = pipeline.model_copy(update={"model": pipeline.model.model_copy(update={"backbone": backbone})})
    return pipeline


def _inference(pipeline, data: Path, batches: int) -> float:
    """Images/s of flip-TTA prediction from the crop cache (DataLoader, device transfer, two forward passes)."""
    from kit.models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    comp = Competition.load(data)
    cfg = pipeline.input
    cache = prepare_crops(comp, "train", cfg.size, cfg.margin, cfg.pad)
    model = create_model(pipeline, comp.n_points).to(device).eval()
    if pipeline.train.channels_last:
        model.to(memory_format=torch.channels_last)
    batch = pipeline.train.batch_size
    rows = np.resize(np.arange(len(comp.train)), batch * batches)
    loader = inference_loader(CropDataset(cache, rows), batch, device, pipeline.train.num_workers)
    perm = np.arange(comp.n_points) if comp.flip_permutation() is None else comp.flip_permutation()
    warm_up = inference_loader(CropDataset(cache, rows[:batch]), batch, device, 0)  # one batch
    predict_points(model, warm_up, device, pipeline.train.amp, pipeline.train.channels_last, perm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    predict_points(model, loader, device, pipeline.train.amp, pipeline.train.channels_last, perm)
    return len(rows) / (time.perf_counter() - start)


def measure(data: Path, tiny: bool) -> list[Row]:
    batches, warmup = (2, 1) if tiny else (20, 5)
    rows: list[Row] = []

    def run(label: str, name: str, overrides: list[str], target: float | None = None) -> dict:
        result = bench(_pipeline(name, tiny, overrides), data, batches=batches, warmup=warmup)
        peak = result.get("peak_memory_gib")
        rows.append(Row(f"{label}: model step", result["model_images_per_second"], "img/s", None, peak))
        rows.append(Row(f"{label}: full loop", result["full_loop_images_per_second"], "img/s", target, peak))
        return result

    big = [] if tiny else ["train.batch_size=1024"]
    regression = run("resnet34 regression 128 px, batch 1024", "resnet34_regression", big, None if tiny else 24000)
    rows.append(Row("  full loop / model step", regression["full_vs_model"], "ratio", 0.9))
    l2_loss = ["model.heatmap.heatmap_loss=l2"]
    l2 = run("Unet(resnet34) stride 4, L2, batch 256", "unet_resnet34_heatmap", l2_loss, None if tiny else 8000)
    for loss, label, target in [("adaptive_wing", "Adaptive Wing", 0.8), ("kl", "KL (the pipeline's loss)", None)]:
        other = run(f"same with {label}", "unet_resnet34_heatmap", [f"model.heatmap.heatmap_loss={loss}"])
        ratio = other["model_images_per_second"] / l2["model_images_per_second"]
        rows.append(Row(f"  {label} / L2 (model step)", ratio, "ratio", target))
    infer = _inference(_pipeline("resnet34_regression", tiny, [] if tiny else ["train.batch_size=1024"]), data, batches)
    rows.append(Row("resnet34 inference with flip TTA, batch 1024", infer, "img/s", None if tiny else 30000))
    measured = {
        load_pipeline(PIPELINES / f"{n}.yaml").model.family for n in ("resnet34_regression", "unet_resnet34_heatmap")
    }
    for name in sorted(p.stem for p in PIPELINES.glob("*.yaml")):  # the GPU pipelines of the other families
        pipeline = load_pipeline(PIPELINES / f"{name}.yaml")
        if name.startswith("demo_") or pipeline.model.family in measured:
            continue
        run(f"{name} ({pipeline.model.family}), batch {pipeline.train.batch_size}", name, [])
    return rows


def print_table(rows: list[Row], device: str) -> None:
    print(f"== kit GPU suite on {device} ==")
    print(f"{'what':<58} {'measured':>12} {'target':>10} {'peak GiB':>9}  verdict")
    for row in rows:
        value = f"{row.value:,.0f}" if row.unit == "img/s" else f"{row.value:.2f}"
        target = "" if row.target is None else (f">= {row.target:,.0f}" if row.unit == "img/s" else f">= {row.target}")
        peak = "" if row.peak_gib is None else f"{row.peak_gib:.1f}"
        print(f"{row.what:<58} {value:>12} {target:>10} {peak:>9}  {row.verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="test models on CPU in seconds (what the tests run)")
    parser.add_argument("--data", type=Path, help="competition folder (default: a synth written to a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from kit.data.folds import make_folds, write_folds
            from kit.synth import generate_competition

            data = Path(tmp) / "synth"
            n_train, n_points = (24, 100) if args.tiny else (2048, 971)
            generate_competition(data, n_train=n_train, n_test=8, seed=0, n_points=n_points)
            comp = Competition.load(data)
            write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=2, seed=0))
        rows = measure(data, args.tiny)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print_table(rows, device)
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ | {"verdict": row.verdict} for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
