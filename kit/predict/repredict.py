"""Recompute a finished run's OOF and test predictions from its fold checkpoints with another TTA or decoder.

The result is a new run folder (same split, so it can be blended with the source), never the source run itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

import kit.models  # noqa: F401  (registers the model families' config sections)
from kit.config import Pipeline, pipeline_from_dict
from kit.data.competition import Competition
from kit.data.derived import flip_permutation
from kit.data.folds import load_folds
from kit.data.prepare import images_sha256, prepare_crops
from kit.errors import KitError
from kit.io import refuse_inside
from kit.metrics import face_sizes, landmark_scores, mse
from kit.names import check_name
from kit.predict.models import inference_device, load_fold_model
from kit.predict.tta import predict_original
from kit.progress import Reporter, SilentReporter
from kit.runs import FoldSummary, Identity, RunDir, RunMetrics, SplitInfo, new_run_dir

TTA = Literal["none", "hflip"]


@dataclass(frozen=True)
class Repredicted:
    """The new run folder and its metrics (with the source run's OOF MSE, for comparison)."""

    run_dir: Path
    metrics: RunMetrics
    source_oof_mse: float | None


def variant_pipeline(pipeline: Pipeline, name: str, tta: TTA | None, decoder: str | None) -> Pipeline:
    """``pipeline`` renamed, with TTA and the model's decoder (for families that have one) replaced where given."""
    model = pipeline.model.with_decoder(decoder) if decoder is not None else pipeline.model
    tree = pipeline.model_copy(update={"model": model}).model_dump(mode="json")
    tree["name"] = name
    if tta is not None:
        tree["tta"]["hflip"] = tta == "hflip"
    return pipeline_from_dict(tree, f"{pipeline.name} with --tta/--decoder")


def default_name(run: RunDir, pipeline: Pipeline) -> str:
    parts = [run.name, "hflip" if pipeline.tta.hflip else "noflip"]
    if pipeline.model.decoder is not None:
        parts.append(pipeline.model.decoder)
    return "-".join(parts)


def _source_folds(source: RunDir, identity: Identity, k: int) -> list[FoldSummary]:
    finished = source.check_folds(identity, k, allow_mixed=True)  # predicting: the threads it trained with are moot
    for fold in range(k):
        if fold not in finished:
            raise KitError(f"{source.fold_dir(fold)}: fold {fold} is not finished (train it first)")
        if not source.checkpoint(fold, "best").is_file():
            raise KitError(f"{source.checkpoint(fold, 'best')}: missing (the fold's model is needed)")
    return [finished[f] for f in range(k)]


def repredict(
    run_dir: str | Path,
    data_dir: str | Path,
    tta: TTA | None = None,
    decoder: str | None = None,
    name: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    workspace: str | Path | None = None,
) -> Repredicted:
    """Predict again with every fold's ``best.pt`` of ``run_dir``, with ``tta`` and ``decoder`` (None: as trained).

    Writes a complete run folder next to the source, ``NAME`` (default ``RUN-hflip|noflip[-DECODER]``), with the
    same split, whose lineage names the source run.

    Raises:
        KitError: the run is incomplete, trained on other data or folds, or the target is the source or exists.
    """
    reporter = reporter or SilentReporter()
    source = RunDir(Path(run_dir))
    source_pipeline = source.read_pipeline()
    provisional = variant_pipeline(source_pipeline, source_pipeline.name, tta, decoder)  # options first
    split = source.read_split()
    comp = Competition.load(data_dir, workspace=workspace)
    if not comp.folds_csv.is_file():
        raise KitError(f"{comp.folds_csv}: missing; the run's fold split cannot be checked")
    current = SplitInfo.of(comp)
    changed = split.first_difference(current)
    if changed is not None:
        raise KitError(
            f"{source.split_file}: the run was trained on other data or folds than {comp.root} ({changed} differs)"
        )
    folds = load_folds(comp.folds_csv, comp.train.file_names)
    k = int(folds.max()) + 1
    recorded = any(s.identity.images_sha256 for s in source.finished_folds(k).values())
    images = images_sha256(comp) if recorded else None  # a run of an older kit did not record its images
    summaries = _source_folds(source, Identity.of(source_pipeline, split, images), k)
    nme_points = comp.nme_points
    face_sizes(comp.train.points, nme_points, source=str(comp.train_csv), names=comp.train.file_names)

    name = check_name(name or default_name(source, provisional), "--name")
    pipeline = variant_pipeline(source_pipeline, name, tta, decoder)
    target = RunDir(source.path.parent / name)
    if target.path.resolve() == source.path.resolve():
        raise KitError(f"--name '{name}': that is the source run, which is never overwritten")
    refuse_inside(target.path, comp.root, "the new run")

    size, margin, pad = pipeline.input.size, pipeline.input.margin, pipeline.input.pad
    train_cache = prepare_crops(comp, "train", size, margin, pad)
    test_cache = prepare_crops(comp, "test", size, margin, pad)
    perm = flip_permutation(comp, pipeline)
    device = inference_device()
    flip = perm if pipeline.tta.hflip else None
    points = np.asarray(comp.train.points, dtype=np.float32)
    identity = Identity.of(pipeline, split, images)
    batch = pipeline.train.batch_size * 2
    source_metrics = source.read_metrics() if source.is_finished() else None
    source_mse = source_metrics.oof_mse if source_metrics is not None else None
    with new_run_dir(target, force) as staging:
        staging.record(pipeline, split, perm)
        for fold, trained in enumerate(summaries):
            started = time.perf_counter()
            model = load_fold_model(pipeline, source.checkpoint(fold, "best"), comp.n_points, device)
            rows = np.flatnonzero(folds == fold)
            amp, channels_last = pipeline.train.amp, pipeline.train.channels_last
            oof = predict_original(model, train_cache, rows, device, batch, amp, channels_last, flip)
            test = predict_original(
                model, test_cache, np.arange(len(comp.test)), device, batch, amp, channels_last, flip
            )
            scores = landmark_scores(oof, points[rows], nme_points)
            summary = trained.model_copy(
                update={
                    "mse": mse(oof, points[rows]),
                    "nme": scores.nme,
                    "failure_rate": scores.failure_rate,
                    "identity": identity,
                    "source": str(source.path.resolve()),
                    "source_mse": trained.mse,
                }
            )
            staging.write_fold(fold, summary, oof, test)
            seconds = time.perf_counter() - started
            reporter.message(
                f"fold {fold}: MSE {summary.mse:.4f} (source {trained.mse:.4f}), "
                f"{(len(rows) + len(comp.test)) / max(seconds, 1e-9):,.0f} images/s"
            )
            del model
        from kit.report import report_writer

        metrics = staging.assemble(
            pipeline,
            split,
            points,
            folds,
            lineage=(str(source.path.resolve()),),
            source_oof_mse=source_mse,
            report=report_writer(train_cache, points, pipeline, nme_points),
            warn=reporter.message,
            nme_points=nme_points,
            identity=identity,
            progress=reporter.progress,
        )
    return Repredicted(run_dir=target.path, metrics=metrics, source_oof_mse=source_mse)
