"""Honest pseudo-labels: fold k trains on the test images labelled only by models that never saw fold k.

fold-train keeps every fold's test predictions (``foldK/test.npy``), so the pseudo-labels of fold k are the
fold-k models' test predictions of the source runs (combined with a blend's weights), and nothing is retrained.
A label made by any other fold's model would carry fold k's training labels into the model scored on fold k.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import Pipeline, PseudoConfig
from kit.data.competition import Competition
from kit.errors import KitError
from kit.runs import LABELS_CHANGED, SplitInfo


@dataclass(frozen=True)
class PseudoLabels:
    """Per fold, the test rows kept and their labels (original pixels), from the fold-k models of the sources."""

    rows: dict[int, np.ndarray]  # fold -> test row indices kept
    points: dict[int, np.ndarray]  # fold -> (M_test, P, 2) labels (every test row; the kept ones are used)
    weight: float  # fraction of the kept rows drawn into each epoch
    sources: tuple[str, ...]  # the source runs (the pseudo-labelled run's lineage)

    def for_fold(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rows[fold], self.points[fold]


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
    """Fold k's labels: the weighted fold-k test predictions of the source runs, filtered by their spread.

    Raises:
        KitError: a source run was trained on another split, or lacks a fold.
    """
    members = _members(Path(cfg.source))
    rows, points = {}, {}
    for fold in range(k):
        predictions, weights = [], []
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
            if member.run.read_fold(fold) is None:
                raise KitError(f"{member.run.fold_dir(fold)}: fold {fold} is not finished")
            predictions.append(np.asarray(member.run.fold_predictions(fold, comp.n_points)[1], np.float64))
            weights.append(np.broadcast_to(np.asarray(member.weight, np.float64), (comp.n_points,)))
        stack = np.stack(predictions)  # R, M, P, 2
        w = np.stack(weights)[:, None, :, None]  # R, 1, P, 1
        points[fold] = (w * stack).sum(axis=0).astype(np.float32)
        keep = np.arange(len(comp.test))
        if cfg.max_spread is not None:
            spread = np.sqrt(stack.var(axis=0).sum(axis=-1).mean(axis=-1))  # RMS over points of the runs' spread
            keep = np.flatnonzero(spread <= cfg.max_spread)
        rows[fold] = keep
    return PseudoLabels(
        rows=rows, points=points, weight=cfg.weight, sources=tuple(str(m.run.path.resolve()) for m in members)
    )
