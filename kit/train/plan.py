"""``plan_run``: what a fold-train of a pipeline is, before any work; one answer for fold-train and the sweep.

A plan holds the resolved pipeline (its pseudo-label source fingerprinted, ``kit.train.pseudo.resolve``), the run's
identity, the crop caches it reads and its folds: those to train and those finished (skipped). A sweep plans each of
its runs as the fold-train of its jobs will, so both agree on which folds are done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kit.config import Pipeline
from kit.data.competition import Competition
from kit.data.derived import fold_count
from kit.data.prepare import CropCache, images_sha256, prepare_crops
from kit.errors import KitError
from kit.runs import FoldSummary, Identity, Numerics, RunDir, RunMetrics, SplitInfo
from kit.train.pseudo import resolve as resolve_pseudo

SPLITS = ("train", "test")


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
        raise KitError(f"--folds {text!r}: the split has {k} folds, numbered 0..{k - 1}")
    return chosen


@dataclass(frozen=True)
class DataState:
    """What a run's identity takes from the data (its ``folds.csv`` must exist): computed once for many plans."""

    split: SplitInfo
    images_sha256: str  # every training and test image's content (stats each image, hashes the changed)
    k: int  # folds of the split

    @classmethod
    def of(cls, comp: Competition) -> DataState:
        return cls(SplitInfo.of(comp), images_sha256(comp), fold_count(comp))


@dataclass(frozen=True)
class CacheSpec:
    """A crop cache a run reads (``kit.data.prepare``): runs of equal ``key`` share it."""

    split: str  # train or test
    size: int
    margin: float
    pad: int

    @property
    def key(self) -> tuple[int, float, int, str]:
        return (self.size, self.margin, self.pad, self.split)

    def prepare(self, comp: Competition, workers: int | None = None, skip_corrupt: bool = False) -> CropCache:
        """Build (or reuse) the cache."""
        return prepare_crops(
            comp, self.split, self.size, self.margin, self.pad, workers=workers, skip_corrupt=skip_corrupt
        )


@dataclass(frozen=True)
class FoldPlan:
    k: int  # folds of the split
    selected: tuple[int, ...]  # the folds asked for (--folds)
    finished: Mapping[int, FoldSummary]  # every finished fold of the run, all of the plan's identity

    @property
    def to_train(self) -> tuple[int, ...]:
        """The selected folds that are not finished: trained (or resumed from their checkpoint)."""
        return tuple(f for f in self.selected if f not in self.finished)

    @property
    def skipped(self) -> tuple[int, ...]:
        """The selected folds that are finished."""
        return tuple(f for f in self.selected if f in self.finished)


@dataclass(frozen=True)
class RunPlan:
    pipeline: Pipeline  # resolved: what the run trains and records
    run: RunDir
    split: SplitInfo
    identity: Identity  # with the numerics of the process that trains, or None (not compared)
    caches: tuple[CacheSpec, ...]  # train, test
    folds: FoldPlan

    def prepare_caches(self, comp: Competition, skip_corrupt: bool = False) -> tuple[CropCache, ...]:
        """The crop caches, built when missing: train, test."""
        return tuple(cache.prepare(comp, skip_corrupt=skip_corrupt) for cache in self.caches)

    def finished_folds(self) -> dict[int, FoldSummary]:
        """The folds finished now with this identity (numerics aside), read from the run folder."""
        try:
            done = self.run.finished_folds(self.folds.k)
        except KitError:
            return {}
        return {fold: s for fold, s in done.items() if self.identity.matches(s.identity, numerics=False)}

    def finished_metrics(self) -> RunMetrics | None:
        """The run's metrics when it is assembled now with this identity (numerics aside), else None."""
        if not self.run.is_finished():
            return None
        try:
            metrics = self.run.read_metrics()
        except KitError:
            return None
        return metrics if self.identity.matches(metrics.identity, numerics=False) else None


def plan_run(
    pipeline: Pipeline,
    comp: Competition,
    runs_dir: str | Path,
    folds: str = "all",
    numerics: Numerics | None = None,
    allow_mixed: bool = False,
    data: DataState | None = None,
) -> RunPlan:
    """Plan the fold-train of ``pipeline`` into ``RUNS/NAME`` from ``comp`` (whose ``folds.csv`` exists).

    Args:
        folds: ``all`` or a comma list (``--folds``).
        numerics: of the process that trains (``kit.train.distributed.current_numerics``); None for a planner that
            does not train (a sweep's driver): the folds' numerics are then not compared.
        allow_mixed: accept finished folds of other numerics.
        data: the data's state, when many runs are planned (default: read here).

    Raises:
        KitError: the pseudo-label source is not a finished run or blend, the fold selection does not fit the split,
            or a finished fold is of another identity (naming what changed).
    """
    pipeline = resolve_pseudo(pipeline)  # its source's fingerprint is part of the run's identity
    run = RunDir.under(runs_dir, pipeline.name)
    data = data if data is not None else DataState.of(comp)
    selected = parse_fold_selection(folds, data.k)
    identity = Identity.of(pipeline, data.split, data.images_sha256, numerics)
    finished = run.check_folds(identity, data.k, allow_mixed or numerics is None)
    size, margin, pad = pipeline.input.size, pipeline.input.margin, pipeline.input.pad
    return RunPlan(
        pipeline=pipeline,
        run=run,
        split=data.split,
        identity=identity,
        caches=tuple(CacheSpec(split, size, margin, pad) for split in SPLITS),
        folds=FoldPlan(k=data.k, selected=tuple(selected), finished=finished),
    )
