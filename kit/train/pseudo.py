"""Honest pseudo-labels: fold k trains on the test images labelled only by models that never saw fold k.

fold-train keeps every fold's test predictions (``foldK/test.npy``), so the pseudo-labels of fold k are the
fold-k models' test predictions of the source runs, and nothing is retrained. A blend or stack combines them with its
model fitted without fold k (``kit.ensemble.record.apply_fold``): its model fitted on all folds saw fold k's labels.
A label made by any other fold's model would carry fold k's training labels into the model scored on fold k.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import Pipeline, PseudoConfig
from kit.data.competition import Competition
from kit.ensemble.source import Source, open_source
from kit.errors import KitError
from kit.io import chunk_rows, read_rows
from kit.runs import LABELS_CHANGED, SplitInfo


@dataclass(frozen=True)
class PseudoLabels:
    """Per fold, the test rows kept and their labels (original pixels), from the fold-k models of the sources.

    A fold's labels are made when it asks for them (``for_fold``): one fold's are held at a time, whatever k.
    """

    source: Source  # the source runs, and the blend's or stack's record that combines them
    n_points: int
    n_test: int
    max_spread: float | None  # keep the test rows whose RMS spread of the runs' predictions is at most this (px)
    weight: float  # fraction of the kept rows drawn into each epoch
    sources: tuple[str, ...]  # the source runs (the pseudo-labelled run's lineage)

    def for_fold(self, fold: int, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The kept test rows and (M_test, P, 2) float32 labels (every test row) of fold ``fold``: the fold-k test
        predictions of the sources, combined by the model fitted without fold k, read in row chunks
        (``progress(rows)`` after each)."""
        tests = [run.fold_predictions(fold, self.n_points)[1] for run in self.source.runs]
        labels = np.empty((self.n_test, self.n_points, 2), dtype=np.float32)
        spread = np.zeros(self.n_test)
        step = max(1, chunk_rows(labels) // len(tests))
        for start in range(0, self.n_test, step):
            rows = slice(start, min(self.n_test, start + step))
            block = [read_rows(test, rows, np.float64) for test in tests]  # R x (rows, P, 2)
            labels[rows] = self.source.combine_fold(fold, block)
            if self.max_spread is not None:
                # RMS over points of the runs' spread
                spread[rows] = np.sqrt(np.stack(block).var(axis=0).sum(axis=-1).mean(axis=-1))
            if progress is not None:
                progress(rows.stop - rows.start)
        keep = np.arange(self.n_test) if self.max_spread is None else np.flatnonzero(spread <= self.max_spread)
        return keep, labels


def source_sha256(source: Source) -> str:
    """What the labels are made of: the source runs' identities and, for a blend or stack, its fitted parameters
    (changes when a source is retrained or the ensemble re-fitted)."""
    runs = [
        {"run": str(run.path.resolve()), "identity": run.read_metrics().model_dump(mode="json")["identity"]}
        for run in source.runs
    ]
    if source.record is None:  # a run: as it always was, with its weight 1
        parts = [runs[0] | {"weight": hashlib.sha256(np.float64(1.0).tobytes()).hexdigest()}]
    else:
        parts = {"kind": source.record.kind, "params_sha256": source.record.arrays.sha256, "runs": runs}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def resolve(pipeline: Pipeline) -> Pipeline:
    """The pipeline with its pseudo source made absolute and fingerprinted (part of the run's identity).

    Raises:
        KitError: the source is not a finished run, blend or stack, or --max-spread needs several source runs.
    """
    cfg = pipeline.pseudo
    if cfg is None:
        return pipeline
    path = Path(cfg.source).resolve()
    source = open_source(path)
    if cfg.max_spread is not None and len(source.runs) < 2:
        raise KitError(
            f"pseudo.max_spread: {path} is one run; the spread of fold k's predictions needs several "
            "source runs (a blend or stack), since other folds' models saw fold k"
        )
    resolved = PseudoConfig(
        source=path, weight=cfg.weight, max_spread=cfg.max_spread, source_sha256=source_sha256(source)
    )
    return pipeline.model_copy(update={"pseudo": resolved})


def _check_split(what: Path, theirs: SplitInfo, split: SplitInfo, comp: Competition, fitted: str) -> None:
    changed = theirs.first_difference(split)
    if changed == "labels_sha256":
        raise KitError(
            f"{what}: {fitted} on other labels than {comp.train_csv} ({LABELS_CHANGED}); "
            "pseudo-labels must come from models of these labels: retrain the source"
        )
    if changed is not None:
        raise KitError(
            f"{what}: {fitted} on other data or folds than {comp.root} ({changed} differs); pseudo-labels must "
            "come from the same split, fold k's from models that never saw fold k"
        )


def load_pseudo_labels(cfg: PseudoConfig, comp: Competition, split: SplitInfo, k: int) -> PseudoLabels:
    """The pseudo-labels of every fold, once the sources are checked: each fold's are made when it trains.

    Raises:
        KitError: a source run (or the blend or stack) was fitted on another split or other labels, a source run
            lacks a fold or predicted other test rows.
    """
    source = open_source(Path(cfg.source))
    if source.record is not None:
        _check_split(source.path, source.record.split, split, comp, f"a {source.record.kind} fitted")
    for run in source.runs:
        _check_split(run.path, run.read_split(), split, comp, "trained")
        for fold in range(k):
            if run.read_fold(fold) is None:
                raise KitError(f"{run.fold_dir(fold)}: fold {fold} is not finished")
            test = run.fold_predictions(fold, comp.n_points)[1]
            if len(test) != len(comp.test):
                raise KitError(f"{run.fold_dir(fold)}: {len(test)} test rows, {comp.test_csv} has {len(comp.test)}")
    return PseudoLabels(
        source=source,
        n_points=comp.n_points,
        n_test=len(comp.test),
        max_spread=cfg.max_spread,
        weight=cfg.weight,
        sources=tuple(str(run.path.resolve()) for run in source.runs),
    )
