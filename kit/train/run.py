"""``fold_train``: k-fold training of one pipeline into ``runs/NAME`` with OOF and fold-averaged test predictions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from kit.config import Pipeline, dump_pipeline
from kit.data.competition import Competition
from kit.data.flip import derive_flip_permutation, save_permutation
from kit.data.folds import load_folds, make_folds, write_folds
from kit.data.prepare import prepare_crops
from kit.errors import DataError, KitError
from kit.io import file_sha256, save_npy, write_json, write_text
from kit.metrics import mse
from kit.runs import SplitInfo, names_sha256
from kit.train.distributed import barrier, init_distributed, select_device
from kit.train.fold import FoldData, train_fold
from kit.train.progress import Reporter, SilentReporter


def ensure_folds(comp: Competition, k: int = 5, seed: int = 42) -> np.ndarray:
    """The data's folds.csv, made with the defaults when absent."""
    if not comp.folds_csv.is_file():
        write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=k, seed=seed))
    return load_folds(comp.folds_csv, comp.train.file_names)


def ensure_flip_permutation(comp: Competition, pipeline: Pipeline | None = None) -> np.ndarray | None:
    """The data's left/right permutation (derived and stored when absent).

    A layout that is not mirror-symmetric has none: that is fine unless the pipeline flips (augmentation or TTA).
    """
    perm = comp.flip_permutation()
    if perm is None:
        try:
            perm = derive_flip_permutation(np.asarray(comp.train.points))
        except DataError as exc:
            if pipeline is not None and (pipeline.augment.hflip > 0 or pipeline.tta.hflip):
                raise KitError(f"{exc}; set augment.hflip=0 and tta.hflip=false to train without flips") from None
            return None
        save_permutation(comp.flip_file, perm)
    if len(perm) != comp.n_points:
        raise KitError(f"{comp.flip_file}: {len(perm)} entries for {comp.n_points} points (rerun kit check)")
    return perm


def split_info(comp: Competition) -> SplitInfo:
    return SplitInfo(
        folds_sha256=file_sha256(comp.folds_csv),
        train_names_sha256=names_sha256(comp.train.file_names),
        test_names_sha256=names_sha256(comp.test.file_names),
        n_points=comp.n_points,
    )


def parse_fold_selection(text: str, k: int) -> list[int]:
    """``all`` or a comma list such as ``0,2``."""
    if text.strip() == "all":
        return list(range(k))
    try:
        chosen = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise KitError(f"--folds {text!r}: expected 'all' or a comma list of fold numbers") from None
    bad = [f for f in chosen if not 0 <= f < k]
    if bad or not chosen:
        raise KitError(f"--folds {text!r}: folds are numbered 0..{k - 1}")
    return chosen


def _claim_run_dir(run_dir: Path, pipeline: Pipeline, split: SplitInfo) -> None:
    """Record the pipeline and split in the run; refuse to mix a different pipeline or split into it."""
    config_text = dump_pipeline(pipeline)
    config_file, split_file = run_dir / "pipeline.yaml", run_dir / "split.json"
    if config_file.is_file():
        old, new = yaml.safe_load(config_file.read_text()) or {}, pipeline.model_dump(mode="json")
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise KitError(f"{config_file}: the run exists with a different pipeline (section {changed[0]!r}); "
                           "use another name or delete the run")
    if split_file.is_file() and json.loads(split_file.read_text()) != split.to_dict():
        raise KitError(f"{split_file}: the run was trained on another fold split or data; delete it or use "
                       "another name")
    write_text(config_file, config_text)
    write_json(split_file, split.to_dict())


def fold_train(
    pipeline: Pipeline,
    data_dir: str | Path,
    out_dir: str | Path = "runs",
    folds: str = "all",
    reporter: Reporter | None = None,
) -> dict | None:
    """Train every selected fold (finished folds are skipped, interrupted ones resumed), then, once all folds
    of the split are done, write ``oof.npy``, ``test.npy``, ``metrics.json`` and ``report.png``.

    Returns the run metrics, or None while some folds of the split are still missing.
    """
    reporter = reporter or SilentReporter()
    dist = init_distributed()
    device = select_device(dist)
    comp = Competition.load(data_dir)
    run_dir = Path(out_dir) / pipeline.name
    if dist.is_main:
        fold_of = ensure_folds(comp)
        perm = ensure_flip_permutation(comp, pipeline)
        split = split_info(comp)
        _claim_run_dir(run_dir, pipeline, split)
        train_cache = prepare_crops(comp.root, "train", pipeline.input.size, pipeline.input.margin, pipeline.input.pad)
        test_cache = prepare_crops(comp.root, "test", pipeline.input.size, pipeline.input.margin, pipeline.input.pad)
    barrier(dist)
    if not dist.is_main:
        fold_of = load_folds(comp.folds_csv, comp.train.file_names)
        perm = comp.flip_permutation()
        split = split_info(comp)
        train_cache = prepare_crops(comp.root, "train", pipeline.input.size, pipeline.input.margin, pipeline.input.pad)
        test_cache = prepare_crops(comp.root, "test", pipeline.input.size, pipeline.input.margin, pipeline.input.pad)

    k = int(fold_of.max()) + 1
    data = FoldData(train_cache, test_cache, np.asarray(comp.train.points, dtype=np.float32), fold_of, perm)
    reporter.message(f"{pipeline.name}: {pipeline.model.family} {pipeline.model.backbone}, {len(fold_of)} train / "
                     f"{len(comp.test)} test images, {comp.n_points} points, {k} folds, device {device}")
    for fold in parse_fold_selection(folds, k):
        fold_dir = run_dir / f"fold{fold}"
        if (fold_dir / "done.json").is_file():
            reporter.message(f"fold {fold}: done, skipped")
            continue
        train_fold(pipeline, data, fold, fold_dir, device, dist, reporter)

    if not dist.is_main:
        return None
    return assemble_run(run_dir, data, split, comp, pipeline, reporter)


def assemble_run(run_dir: Path, data: FoldData, split: SplitInfo, comp: Competition, pipeline: Pipeline,
                 reporter: Reporter) -> dict | None:
    """Combine finished folds into ``oof.npy``, ``test.npy``, ``metrics.json`` and ``report.png``."""
    k = int(data.folds.max()) + 1
    done_files = [run_dir / f"fold{f}" / "done.json" for f in range(k)]
    missing = [f for f, p in enumerate(done_files) if not p.is_file()]
    if missing:
        reporter.message(f"folds {missing} not trained yet: oof.npy and test.npy are written when all {k} are done")
        return None
    oof = np.zeros_like(data.points)
    tests = []
    summaries = [json.loads(p.read_text()) for p in done_files]
    for fold in range(k):
        oof[data.folds == fold] = np.load(run_dir / f"fold{fold}" / "oof.npy")
        tests.append(np.load(run_dir / f"fold{fold}" / "test.npy"))
    test = np.mean(tests, axis=0).astype(np.float32)
    started = time.perf_counter()
    metrics = {
        "oof_mse": mse(oof, data.points),
        "name": pipeline.name,
        "family": pipeline.model.family,
        "backbone": pipeline.model.backbone,
        "folds": [{key: s[key] for key in ("fold", "mse", "best_epoch", "epochs", "wall_seconds",
                                          "images_per_second")} for s in summaries],
        "wall_seconds": sum(s["wall_seconds"] for s in summaries),
        "images_per_second": float(np.mean([s["images_per_second"] for s in summaries])),
        "tta": pipeline.tta.model_dump(),
        "split": split.to_dict(),
    }
    save_npy(run_dir / "oof.npy", oof)
    save_npy(run_dir / "test.npy", test)
    try:
        from kit.train.report import write_report

        write_report(run_dir / "report.png", summaries, data, oof, pipeline)
    except Exception as exc:  # the report is a convenience; never lose the run over a plot
        reporter.message(f"report.png not written: {type(exc).__name__}: {exc}")
    metrics["report_seconds"] = time.perf_counter() - started
    write_json(run_dir / "metrics.json", metrics)  # written last: the run is finished when it exists
    reporter.message(f"{pipeline.name}: OOF MSE {metrics['oof_mse']:.4f} (folds: "
                     + ", ".join(f"{s['mse']:.3f}" for s in summaries) + f"), written to {run_dir}")
    return metrics
