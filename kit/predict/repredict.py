"""Recompute a finished run's OOF and test predictions from its fold checkpoints with another TTA or decoder.

The result is a new run folder (same split, so it can be blended with the source), never the source run itself.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from kit.config import Pipeline, PretrainedConfig, dump_pipeline, pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import load_folds
from kit.data.prepare import prepare_crops
from kit.errors import KitError
from kit.io import save_npy, write_json, write_text
from kit.metrics import mse
from kit.models import create_model
from kit.train.checkpoint import load_checkpoint
from kit.train.distributed import DistInfo, select_device
from kit.train.fold import FoldData, predict_original
from kit.train.progress import Reporter, SilentReporter
from kit.train.run import assemble_run, ensure_flip_permutation, split_info

TTA = Literal["none", "hflip"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Repredicted:
    """The new run folder and its metrics (``oof_mse`` and the source run's, for comparison)."""

    run_dir: Path
    metrics: dict
    source_oof_mse: float | None


def load_run_pipeline(run_dir: Path) -> Pipeline:
    path = run_dir / "pipeline.yaml"
    if not path.is_file():
        raise KitError(f"{path}: missing (not a kit run folder?)")
    return pipeline_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


def variant_pipeline(pipeline: Pipeline, name: str, tta: TTA | None, decoder: str | None) -> Pipeline:
    """``pipeline`` renamed, with TTA and (heatmap family only) the decoder replaced where given."""
    tree = pipeline.model_dump(mode="json")
    tree["name"] = name
    if tta is not None:
        tree["tta"]["hflip"] = tta == "hflip"
    if decoder is not None:
        if pipeline.model.family != "heatmap":
            raise KitError(f"--decoder: the run is a {pipeline.model.family} model; decoders apply to heatmap runs")
        tree["model"]["heatmap"]["decoder"] = decoder
    return pipeline_from_dict(tree, f"{pipeline.name} with --tta/--decoder")


def default_name(run_dir: Path, pipeline: Pipeline) -> str:
    parts = [run_dir.name, "hflip" if pipeline.tta.hflip else "noflip"]
    if pipeline.model.family == "heatmap":
        parts.append(pipeline.model.heatmap.decoder)
    return "-".join(parts)


def _load_fold_model(pipeline: Pipeline, checkpoint: Path, n_points: int, device: torch.device):
    # The checkpoint holds every weight: build without the pretrained source (which may be absent here).
    bare = pipeline.model_copy(update={"model": pipeline.model.model_copy(update={"pretrained": PretrainedConfig()})})
    model = create_model(bare, n_points)
    try:
        model.load_state_dict(load_checkpoint(checkpoint)["model"])
    except (RuntimeError, KeyError) as exc:
        raise KitError(f"{checkpoint}: does not fit the run's pipeline ({type(exc).__name__})") from None
    model.to(device)
    if pipeline.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def repredict(
    run_dir: str | Path,
    data_dir: str | Path,
    tta: TTA | None = None,
    decoder: str | None = None,
    name: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> Repredicted:
    """Predict again with every fold's ``best.pt`` of ``run_dir``, with ``tta`` and ``decoder`` (None: as trained).

    Writes a complete run folder next to the source, ``NAME`` (default ``RUN-hflip|noflip[-DECODER]``), with the
    same ``split.json``: pipeline.yaml, fold*/oof.npy, test.npy, done.json, oof.npy, test.npy, metrics.json and
    report.png.

    Raises:
        KitError: the run is incomplete, trained on other data or folds, or the target is the source or exists.
    """
    reporter = reporter or SilentReporter()
    run_dir = Path(run_dir)
    source = load_run_pipeline(run_dir)
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise KitError(f"{split_file}: missing (not a kit run folder?)")
    split = json.loads(split_file.read_text())

    comp = Competition.load(data_dir)
    if not comp.folds_csv.is_file():
        raise KitError(f"{comp.folds_csv}: missing; the run's fold split cannot be checked")
    current = split_info(comp)
    if current.to_dict() != split:
        changed = next(k for k in split if split.get(k) != current.to_dict().get(k))
        raise KitError(f"{split_file}: the run was trained on other data or folds than {comp.root} ({changed} differs)")
    folds = load_folds(comp.folds_csv, comp.train.file_names)
    k = int(folds.max()) + 1
    checkpoints = [run_dir / f"fold{f}" / "best.pt" for f in range(k)]
    missing = [str(p) for p in checkpoints if not p.is_file()]
    if missing:
        raise KitError(f"{missing[0]}: missing (is every fold of the run trained?)")

    provisional = variant_pipeline(source, source.name, tta, decoder)
    name = name or default_name(run_dir, provisional)
    if not _NAME.fullmatch(name):
        raise KitError(f"--name '{name}': use letters, digits, '.', '_' and '-' (no folders)")
    pipeline = variant_pipeline(source, name, tta, decoder)
    target = run_dir.parent / name
    if target.resolve() == run_dir.resolve():
        raise KitError(f"--name '{name}': that is the source run, which is never overwritten")
    if target.exists():
        if not force:
            raise KitError(f"{target}: exists (choose another --name, or --force to replace it)")
        if not (target / "pipeline.yaml").is_file():
            raise KitError(f"{target}: exists and is not a kit run; not replacing it")
        shutil.rmtree(target)

    input_cfg = pipeline.input
    train_cache = prepare_crops(comp.root, "train", input_cfg.size, input_cfg.margin, input_cfg.pad)
    test_cache = prepare_crops(comp.root, "test", input_cfg.size, input_cfg.margin, input_cfg.pad)
    perm = ensure_flip_permutation(comp)
    data = FoldData(train_cache, test_cache, np.asarray(comp.train.points, dtype=np.float32), folds, perm)
    device = select_device(DistInfo())
    flip = perm if pipeline.tta.hflip else None
    test_rows = np.arange(len(comp.test))

    write_text(target / "pipeline.yaml", dump_pipeline(pipeline))
    write_json(target / "split.json", split)
    for fold, checkpoint in enumerate(checkpoints):
        model = _load_fold_model(pipeline, checkpoint, comp.n_points, device)
        rows = np.flatnonzero(folds == fold)
        oof = predict_original(model, train_cache, rows, pipeline, device, flip)
        test = predict_original(model, test_cache, test_rows, pipeline, device, flip)
        fold_dir = target / f"fold{fold}"
        save_npy(fold_dir / "oof.npy", oof.astype(np.float32))
        save_npy(fold_dir / "test.npy", test.astype(np.float32))
        done_file = run_dir / f"fold{fold}" / "done.json"
        summary = json.loads(done_file.read_text()) if done_file.is_file() else {
            "best_epoch": -1, "epochs": 0, "wall_seconds": 0.0, "images_per_second": 0.0, "history": []}
        summary |= {"fold": fold, "mse": mse(oof, data.points[rows]), "source_mse": summary.get("mse"),
                    "source": str(run_dir)}
        write_json(fold_dir / "done.json", summary)
        reporter.message(f"fold {fold}: MSE {summary['mse']:.4f}"
                         + (f" (source {summary['source_mse']:.4f})" if summary["source_mse"] is not None else ""))
        del model

    metrics = assemble_run(target, data, current, comp, pipeline, reporter)
    source_metrics = run_dir / "metrics.json"
    source_mse = json.loads(source_metrics.read_text()).get("oof_mse") if source_metrics.is_file() else None
    metrics |= {"source": str(run_dir), "source_oof_mse": source_mse}
    write_json(target / "metrics.json", metrics)
    return Repredicted(run_dir=target, metrics=metrics, source_oof_mse=source_mse)
