"""``fold_train``: k-fold training of one pipeline into ``runs/NAME`` with OOF and fold-averaged test predictions.

Everything is validated before any work: the pipeline (its model builds, its weights are there, the fold selection
fits the split, flips are possible) and the data (tables and every image file), before a cache is built or the run
folder is claimed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import Pipeline
from kit.data.competition import Competition
from kit.data.derived import ensure_flip_permutation, ensure_folds, flip_permutation, fold_count
from kit.data.folds import load_folds
from kit.data.images import unreadable
from kit.data.prepare import images_sha256
from kit.errors import DataError
from kit.io import check_output_folder
from kit.metrics import face_sizes, format_nme, normalisation
from kit.progress import FoldRecord, RecordingReporter, RecordSink, Reporter, RunRecord, SilentReporter
from kit.runs import Identity, RunDir, RunMetrics, SplitInfo
from kit.tracking import RunTracking, Tracker
from kit.train.distributed import barrier, current_numerics, init_distributed, select_device
from kit.train.fold import FoldData, runtime_faults, train_fold
from kit.train.plan import RunPlan, parse_fold_selection, plan_run
from kit.train.pseudo import load_pseudo_labels
from kit.train.signals import Interrupted, stop_on_signals


def check_images(comp: Competition) -> None:
    """Every image the tables name exists (a stat each: cheap next to a crop cache).

    Raises:
        DataError: naming the first missing image and the table that lists it.
    """
    for table, paths in ((comp.train_csv, comp.train_paths()), (comp.test_csv, comp.test_paths())):
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            try:
                missing.open("rb").close()
            except OSError as exc:
                raise DataError(f"{unreadable(missing, exc)} (listed in {table})") from None
            raise DataError(f"{missing}: not a regular file (listed in {table})")


@dataclass(frozen=True)
class Checked:
    """A validated fold-train's data and fold selection."""

    comp: Competition
    k: int
    folds: list[int]
    nme_points: tuple[int, int] | None = None  # the face size's two points for NME; None: the face box


def validate(
    pipeline: Pipeline,
    data_dir: str | Path,
    folds: str = "all",
    workspace: str | Path | None = None,
    nme_points: tuple[int, int] | None = None,
) -> Checked:
    """Check the pipeline and the data without writing anything (but the parsed-table cache).

    ``nme_points`` overrides the data's ``nme_points.txt``; either is checked against the faces (every face has a
    size for NME).

    Raises:
        KitError: naming the key, file or fold at fault.
    """
    from kit.models import create_model

    RunDir.under(".", pipeline.name)  # a plain run name
    comp = Competition.load(data_dir, workspace=workspace)
    check_images(comp)
    k = fold_count(comp)
    selected = parse_fold_selection(folds, k)
    flip_permutation(comp, pipeline)
    create_model(pipeline, comp.n_points)  # the backbone exists, its weights are available, the input size fits
    nme_points = comp.resolve_nme_points(nme_points)
    face_sizes(comp.train.points, nme_points, source=str(comp.train_csv), names=comp.train.file_names)
    return Checked(comp=comp, k=k, folds=selected, nme_points=nme_points)


def run_identity(pipeline: Pipeline, comp: Competition, split: SplitInfo, device=None) -> Identity:
    """What a fold trained here from ``comp`` is: pipeline, split, labels, images and (with ``device``) numerics."""
    numerics = current_numerics(device) if device is not None else None
    return Identity.of(pipeline, split, images_sha256(comp), numerics)


def _skipped(reporter: Reporter, cache, names, what: str) -> None:
    if cache.corrupt:
        listed = ", ".join(str(names[i]) for i in cache.corrupt[:10]) + (", ..." if len(cache.corrupt) > 10 else "")
        reporter.message(f"--skip-corrupt: {len(cache.corrupt)} {what} image(s) with corrupt data: {listed}")


def _pseudo_labels(plan: RunPlan, comp: Competition):
    cfg = plan.pipeline.pseudo
    return load_pseudo_labels(cfg, comp, plan.split, plan.folds.k) if cfg is not None else None


def fold_train(
    pipeline: Pipeline,
    data_dir: str | Path,
    out_dir: str | Path = "runs",
    folds: str = "all",
    reporter: Reporter | None = None,
    workspace: str | Path | None = None,
    nme_points: tuple[int, int] | None = None,
    allow_mixed: bool = False,
    skip_corrupt: bool = False,
    tracker: Tracker | None = None,
    records: RecordSink | None = None,
) -> RunMetrics | None:
    """Train every selected fold (finished folds are skipped, interrupted ones resumed), then, once all folds
    of the split are done, assemble the run (``kit.runs.RunDir.assemble``): OOF and test predictions, metrics, report.

    ``nme_points`` (the face size's two points for NME) overrides the data's ``nme_points.txt``. A finished fold or
    a checkpoint of other labels, images, split or pipeline is refused, naming what changed; one of other numerics
    (CPU threads, device) too, unless ``allow_mixed`` (the run then records the mix). ``skip_corrupt`` trains
    without the training images whose data is corrupt (listing them) instead of refusing them. ``tracker``
    (``kit.tracking``) logs the run, its folds and epochs; it never stops the training. ``records``
    (``kit.progress``) gets each epoch, fold and the run's end as a structured record (for ``kit sweep``).

    Returns the run metrics, or None while some folds of the split are still missing.
    """
    reporter = reporter or SilentReporter()
    checked = validate(pipeline, data_dir, folds, workspace, nme_points)
    comp = checked.comp
    check_output_folder(out_dir, "--out")
    check_output_folder(RunDir.under(out_dir, pipeline.name).path, "--out")
    dist = init_distributed()
    device = select_device(dist)
    records = records if records is not None and dist.is_main else RecordSink()
    reporter = RecordingReporter(reporter, records) if records else reporter
    with contextlib.ExitStack() as stack:
        if dist.is_main:
            fold_of = ensure_folds(comp)
            perm = ensure_flip_permutation(comp, pipeline)
            plan = plan_run(pipeline, comp, out_dir, folds, current_numerics(device), allow_mixed)
            pseudo = _pseudo_labels(plan, comp)
            train_cache, test_cache = plan.prepare_caches(comp, skip_corrupt)  # after the checks: they may be long
            claim = plan.run.claim(plan.pipeline, plan.split, plan.folds.selected, perm, plan.identity, allow_mixed)
            finished = stack.enter_context(claim)
        barrier(dist)
        if not dist.is_main:
            fold_of = load_folds(comp.folds_csv, comp.train.file_names)
            perm = comp.flip_permutation()
            plan = plan_run(pipeline, comp, out_dir, folds, current_numerics(device), allow_mixed=True)
            pseudo = _pseudo_labels(plan, comp)
            train_cache, test_cache = plan.prepare_caches(comp, skip_corrupt)
            finished = plan.folds.finished
        pipeline, run, identity = plan.pipeline, plan.run, plan.identity
        _skipped(reporter, train_cache, comp.train.file_names, "training")
        _skipped(reporter, test_cache, comp.test.file_names, "test")
        points = np.asarray(comp.train.points, dtype=np.float32)
        data = FoldData(train_cache, test_cache, points, fold_of, perm, pseudo, checked.nme_points)
        reporter.message(
            f"{pipeline.name}: {pipeline.model.family} {pipeline.model.backbone}, {len(fold_of)} train "
            f"/ {len(comp.test)} test images, {comp.n_points} points, {plan.folds.k} folds, device {device}"
        )
        lineage = pseudo.sources if pseudo is not None else ()
        on_main = tracker if tracker is not None and dist.is_main else Tracker.off()
        tracking = RunTracking(on_main, run, pipeline, identity, lineage)
        stop = stack.enter_context(stop_on_signals())
        for fold in plan.folds.selected:
            if fold in finished:
                reporter.message(f"fold {fold}: done, skipped")
                records.emit(FoldRecord(fold=fold, state="skipped", mse=finished[fold].mse))
                continue
            if stop:
                raise Interrupted(
                    f"{stop.name} before fold {fold}: finished folds are kept; rerun the same command to resume",
                    stop.signum,
                )
            tracking.fold_started(fold)
            records.emit(FoldRecord(fold=fold, state="started"))
            try:
                with runtime_faults(fold, pipeline):
                    summary = train_fold(
                        pipeline, data, fold, run, identity, device, dist, tracking.reporter(reporter), stop
                    )
            except BaseException as exc:
                tracking.fold_stopped(fold, interrupted=isinstance(exc, (Interrupted, KeyboardInterrupt)))
                raise
            tracking.fold_finished(fold, summary)
            records.emit(FoldRecord(fold=fold, state="done", mse=summary.mse if summary is not None else None))

    if not dist.is_main:
        return None
    metrics = assemble(run, pipeline, plan.split, data, reporter, lineage, identity=identity, allow_mixed=allow_mixed)
    missing = (
        () if metrics is not None else tuple(sorted(set(range(plan.folds.k)) - set(run.finished_folds(plan.folds.k))))
    )
    records.emit(RunRecord(name=pipeline.name, oof_mse=metrics.oof_mse if metrics else None, missing=missing))
    tracking.run_finished(metrics)
    return metrics


def assemble(
    run: RunDir,
    pipeline: Pipeline,
    split: SplitInfo,
    data: FoldData,
    reporter: Reporter,
    lineage: tuple[str, ...] = (),
    source_oof_mse: float | None = None,
    identity: Identity | None = None,
    allow_mixed: bool = False,
) -> RunMetrics | None:
    """The run's metrics once every fold is finished (with ``report.png``); None before."""
    from kit.report import report_writer

    report = report_writer(data.train_cache, data.points, pipeline, data.nme_points)
    metrics = run.assemble(
        pipeline,
        split,
        data.points,
        data.folds,
        lineage,
        source_oof_mse,
        report,
        reporter.message,
        data.nme_points,
        identity=identity,
        allow_mixed=allow_mixed,
        progress=reporter.progress,
    )
    if metrics is None:
        done = run.finished_folds(int(data.folds.max()) + 1)
        missing = [f for f in range(int(data.folds.max()) + 1) if f not in done]
        reporter.message(f"folds {missing} not trained yet: oof.npy and test.npy are written when all are done")
        return None
    reporter.message(
        f"{pipeline.name}: OOF MSE {metrics.oof_mse:.4f} (folds: "
        + ", ".join(f"{s.mse:.3f}" for s in metrics.folds)
        + f"), {format_nme(metrics.oof_nme, metrics.oof_failure_rate)} ({normalisation(metrics.nme_points)}), "
        f"written to {run.path}"
    )
    if metrics.mixed_numerics:
        mixed = "; ".join(n.describe() for n in metrics.mixed_numerics)
        reporter.message(f"{pipeline.name}: folds trained with mixed numerics ({mixed}), recorded in the run")
    return metrics
