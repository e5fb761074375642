"""What ``kit infer`` and ``kit pseudo`` take as a source of landmarks: a finished run folder, or a blend's or stack's
record, whose member runs' predictions its fitted model combines (``kit.ensemble.record``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.ensemble.record import EnsembleRecord, apply, apply_fold, read_record
from kit.errors import KitError
from kit.runs import RunDir


@dataclass(frozen=True)
class Source:
    """A run folder (its predictions as they are) or an ensemble record (its runs, combined by its model)."""

    path: Path
    runs: tuple[RunDir, ...]  # finished runs, in the record's order
    record: EnsembleRecord | None = None  # None: one run

    def combine(self, predictions: Sequence[np.ndarray]) -> np.ndarray:
        """The source's predictions (N, P, 2) float32 from each run's (N, P, 2): the model fitted on all folds."""
        if self.record is None:
            return np.asarray(predictions[0], dtype=np.float32)
        return apply(self.record, predictions)

    def combine_fold(self, k: int, predictions: Sequence[np.ndarray]) -> np.ndarray:
        """As ``combine`` for fold ``k``'s predictions, with the model fitted without fold ``k``."""
        if self.record is None:
            return np.asarray(predictions[0], dtype=np.float32)
        return apply_fold(self.record, k, predictions)


def open_source(path: str | Path) -> Source:
    """The finished run folder or the blend's or stack's record at ``path``, with its runs.

    Raises:
        KitError: neither a finished run nor a record, or a run of the record is missing, unfinished or retrained.
    """
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        run.read_metrics()  # a finished run
        return Source(path, (run,))
    if path.suffix != ".json" or not path.is_file():
        raise KitError(f"{path}: expected a finished run folder or a blend's or stack's .json")
    record = read_record(path)
    return Source(path, tuple(record.member_runs(path)), record)
