"""Honest pseudo-labels: fold k trains on the test images labelled only by models that never saw fold k.

fold-train keeps every fold's test predictions (``foldK/test.npy``), so the pseudo-labels of fold k are the
fold-k models' test predictions of the source runs (combined with a blend's weights), and nothing is retrained.
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
from kit.errors import KitError
from kit.io import chunk_rows, read_rows
from kit.runs import LABELS_CHANGED, SplitInfo


@dataclass(frozen=True)
class PseudoLabels:
    """Per fold, the test rows kept and their labels (original pixels), from the fold-k models of the sources.

    A fold's labels are made when it asks for them (``for_fold``): one fold's are held at a time, whatever k.
    """

    members: tuple  # the source runs and their weights (kit.predict.infer.Member)
    n_points: int
    n_test: int
    max_spread: float | None  # keep the test rows whose RMS spread of the runs' predictions is at most this (px)
    weight: float  # fraction of the kept rows drawn into each epoch
    sources: tuple[str, ...]  # the source runs (the pseudo-labelled run's lineage)

    def for_fold(self, fold: int, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The kept test rows and (M_test, P, 2) float32 labels (every test row) of fold ``fold``: the weighted
        fold-k test predictions of the sources, read in row chunks (``progress(rows)`` after each)."""
        tests = [member.run.fold_predictions(fold, self.n_points)[1] for member in self.members]
        weights = np.stack([np.broadcast_to(np.asarray(m.weight, np.float64), (self.n_points,)) for m in self.members])
        weights = weights[:, None, :, None]  # R, 1, P, 1
        labels = np.empty((self.n_test, self.n_points, 2), dtype=np.float32)
        spread = np.zeros(self.n_test)
        step = max(1, chunk_rows(labels) // len(tests))
        for start in range(0, self.n_test, step):
            rows = slice(start, min(self.n_test, start + step))
            stack = np.stack([read_rows(test, rows, np.float64) for test in tests])  # R, rows, P, 2
            labels[rows] = (weights * stack).sum(axis=0)
            if self.max_spread is not None:
                spread[rows] = np.sqrt(stack.var(axis=0).sum(axis=-1).mean(axis=-1))  # RMS over points of the spread
            if progress is not None:
                progress(rows.stop - rows.start)
        keep = np.arange(self.n_test) if self.max_spread is None else np.flatnonzero(spread <= self.max_spread)
        return keep, labels


def _members(source: Path):
    from kit.predict.infer import source_members

    return source_members(source)


def source_sha256(source: Path) -> str:
    """What the labels are made of: the source runs' identities and weights (changes when a source is retrained)."""
    parts = []
    for member in _members(source):
        metrics = member.run.read_metrics()
        weight = np.asarray(member.weight, np.float64)
        parts.append(
            {
                "run": str(member.run.path.resolve()),
                "identity": metrics.model_dump(mode="json")["identity"],
                "weight": hashlib.sha256(weight.tobytes()).hexdigest(),
            }
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def resolve(pipeline: Pipeline) -> Pipeline:
    """The pipeline with its pseudo source made absolute and fingerprinted (part of the run's identity).

    Raises:
        KitError: the source is not a finished run or blend, or --max-spread needs several source runs.
    """
    cfg = pipeline.pseudo
    if cfg is None:
        return pipeline
    source = Path(cfg.source).resolve()
    members = _members(source)
    if cfg.max_spread is not None and len(members) < 2:
        raise KitError(
            f"pseudo.max_spread: {source} is one run; the spread of fold k's predictions needs several "
            "source runs (a blend), since other folds' models saw fold k"
        )
    resolved = PseudoConfig(
        source=source, weight=cfg.weight, max_spread=cfg.max_spread, source_sha256=source_sha256(source)
    )
    return pipeline.model_copy(update={"pseudo": resolved})


def load_pseudo_labels(cfg: PseudoConfig, comp: Competition, split: SplitInfo, k: int) -> PseudoLabels:
    """The pseudo-labels of every fold, once the source runs are checked: each fold's are made when it trains.

    Raises:
        KitError: a source run was trained on another split, lacks a fold, or predicted other test rows.
    """
    members = _members(Path(cfg.source))
    for member in members:
        run_split = member.run.read_split()
        changed = run_split.first_difference(split)
        if changed == "labels_sha256":
            raise KitError(
                f"{member.run.path}: trained on other labels than {comp.train_csv} ({LABELS_CHANGED}); "
                "pseudo-labels must come from models of these labels: retrain the source"
            )
        if changed is not None:
            raise KitError(
                f"{member.run.path}: trained on other data or folds than {comp.root} ({changed} "
                "differs); pseudo-labels must come from the same split"
            )
        for fold in range(k):
            if member.run.read_fold(fold) is None:
                raise KitError(f"{member.run.fold_dir(fold)}: fold {fold} is not finished")
            test = member.run.fold_predictions(fold, comp.n_points)[1]
            if len(test) != len(comp.test):
                raise KitError(
                    f"{member.run.fold_dir(fold)}: {len(test)} test rows, {comp.test_csv} has {len(comp.test)}"
                )
    return PseudoLabels(
        members=tuple(members),
        n_points=comp.n_points,
        n_test=len(comp.test),
        max_spread=cfg.max_spread,
        weight=cfg.weight,
        sources=tuple(str(m.run.path.resolve()) for m in members),
    )
