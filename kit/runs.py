"""The run folder: one typed contract that every reader and writer goes through.

``runs/NAME/`` holds
- ``pipeline.yaml``: the resolved pipeline; ``split.json``: the split it is trained on (``SplitInfo``);
  ``flip_permutation.txt``: the data's left/right permutation when it has one (flip TTA needs it, also in
  ``kit infer`` away from the data);
- ``foldK/``: ``last.pt`` (resumable), ``best.pt``, ``oof.npy`` and ``test.npy`` of the fold, and ``done.json``
  (``FoldSummary``, written last: the fold is finished when it exists), ``.lock`` while a process trains it;
- ``oof.npy`` (N_train, P, 2) and ``test.npy`` (N_test, P, 2), float32 in original-image pixels in the row order
  of ``landmarks.csv`` / ``test_points.csv``, ``report.png``, and ``metrics.json`` (``RunMetrics``, written last:
  the run is finished when it exists).

Each finished fold records its ``Identity`` (the resolved pipeline's hash, the split's hash, the training labels'
and the images' fingerprints, the kit version and what changes CPU numerics): a fold whose identity differs from
its run's is never taken as done, and the refusal names what changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import yaml

from kit.errors import KitError
from kit.io import npy_writer, read_json_record, read_rows, row_chunks, save_npy, write_json, write_text
from kit.locks import acquire_lock, process_alive, release_lock, wait_for_lock
from kit.names import check_name
from kit.records import EpochStats as EpochStats
from kit.records import Identity as Identity
from kit.records import Numerics as Numerics
from kit.records import Record as _Record
from kit.records import SplitInfo as SplitInfo
from kit.records import names_sha256 as names_sha256
from kit.records import pipeline_sha256 as pipeline_sha256

if TYPE_CHECKING:
    from kit.config import Pipeline

PIPELINE_FILE, SPLIT_FILE, METRICS_FILE, DONE_FILE = "pipeline.yaml", "split.json", "metrics.json", "done.json"
OOF_FILE, TEST_FILE, REPORT_FILE, LOCK_FILE = "oof.npy", "test.npy", "report.png", ".lock"
FLIP_FILE = "flip_permutation.txt"
ASSEMBLY_WAIT_SECONDS = 600.0  # how long an assembler waits for another one writing the same run
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when built with it: 10x faster


LABELS_CHANGED = (
    "the training labels differ (landmarks.csv was edited since the run, or the run is of another competition)"
)


class FoldScore(_Record):
    """A fold's score as listed in the run's metrics."""

    fold: int
    mse: float  # OOF MSE of the fold in original pixels, with the run's TTA
    nme: float | None = None  # OOF NME of the fold, percent of the face size (None: written by an older kit)
    failure_rate: float | None = None  # percent of the fold's faces whose NME is above 10%
    best_epoch: int  # -1: no training epoch (re-predicted from another run's checkpoint)
    epochs: int
    wall_seconds: float
    images_per_second: float


class FoldSummary(FoldScore):
    """``foldK/done.json``: a finished fold, with what produced it."""

    identity: Identity
    best_valid_mse_no_tta: float | None = None
    n_train: int
    n_valid: int
    world_size: int = 1  # processes that trained the fold together (torchrun); their weights were checked equal
    history: tuple[EpochStats, ...] = ()
    source: str | None = None  # the run whose fold checkpoint made these predictions (kit predict)
    source_mse: float | None = None  # that run's fold MSE
    mixed_numerics: tuple[Numerics, ...] = ()  # other numerics part of the fold was trained with (--allow-mixed)

    def score(self) -> FoldScore:
        return FoldScore(**{key: getattr(self, key) for key in FoldScore.model_fields})


class RunMetrics(_Record):
    """``metrics.json``: a finished run."""

    name: str
    family: str
    backbone: str
    oof_mse: float  # all folds' OOF predictions against landmarks.csv
    folds: tuple[FoldScore, ...]
    oof_nme: float | None = None  # their NME: mean over faces, percent of the face size (None: an older kit)
    oof_failure_rate: float | None = None  # percent of faces whose NME is above 10%
    nme_points: tuple[int, int] | None = None  # the points whose distance is the face size; None: the face box
    wall_seconds: float
    images_per_second: float
    tta: dict
    split: SplitInfo
    identity: Identity | None = None  # None: written by an older kit
    lineage: tuple[str, ...] = ()  # source runs: the run re-predicted (kit predict); later stacks and pseudo-labels
    source_oof_mse: float | None = None  # OOF MSE of the first source run
    report_seconds: float = 0.0
    mixed_numerics: tuple[Numerics, ...] = ()  # every numerics its folds trained with, when several (--allow-mixed)


def _remedy(path: Path) -> str:
    folder = path.parent
    if folder.name.startswith("fold") and folder.name[4:].isdigit():
        return f"delete {folder} and rerun kit fold-train to retrain fold {folder.name[4:]}"
    return "rerun kit fold-train (finished folds are kept) to write it again"


_CHANGED = {
    "labels": "landmarks.csv changed since it was trained",
    "images": "an image was replaced since it was trained",
    "split": "folds.csv or the rows changed since it was trained",
}


def _numerics_message(where: Path, theirs: Numerics | None, ours: Numerics | None, done: str) -> str:
    settings = ""
    if theirs is not None and theirs.threads is not None:
        settings = f"OMP_NUM_THREADS={theirs.threads}, or kit sweep's --jobs that gave it"
    return (
        f"{where}: {done} with {theirs.describe() if theirs else 'unrecorded numerics'}, this process runs "
        f"{ours.describe() if ours else 'unrecorded numerics'} (results differ with the CPU thread count and device); "
        f"rerun with the same settings{f' ({settings})' if settings else ''}, or pass --allow-mixed to accept "
        "and record the mix"
    )


def check_identity(folder: Path, theirs: Identity, ours: Identity, run: str, allow_mixed: bool = False) -> None:
    """Refuse a finished fold (``folder``) of identity ``theirs`` in a run training with identity ``ours``.

    Raises:
        KitError: naming the fold folder, what changed (labels / images / split / pipeline / kit version, or the
            numerics, unless ``allow_mixed``) and the remedy.
    """
    differs = theirs.differences(ours, numerics=False)
    if differs:
        why = "; ".join(_CHANGED[name] for name in differs if name in _CHANGED)
        raise KitError(
            f"{folder}: finished with a different {' and '.join(differs)} than this run ({run})"
            + (f": {why}" if why else "")
            + "; delete that fold folder to retrain it, or use another run name"
        )
    if not allow_mixed and theirs.numerics != ours.numerics:
        raise KitError(_numerics_message(folder, theirs.numerics, ours.numerics, "finished"))


def _read_record(path: Path, record: type[_Record]):
    return read_json_record(path, record, f"invalid {record.__name__}", _remedy(path))


@dataclass(frozen=True)
class Run:
    """A finished run: its predictions (memory-mapped) and metrics."""

    path: Path
    name: str
    oof: np.ndarray  # (N_train, P, 2)
    test: np.ndarray  # (N_test, P, 2)
    metrics: RunMetrics
    split: SplitInfo

    @property
    def oof_mse(self) -> float:
        return self.metrics.oof_mse

    def artifact_files(self) -> dict[str, Path]:
        """The files that make up the finished run's predictions and metrics, by file name (for provenance)."""
        return {name: self.path / name for name in (OOF_FILE, TEST_FILE, METRICS_FILE)}


def _load_array(path: Path, n_points: int, rows: int | None = None) -> np.ndarray:
    try:
        # Memory-mapped: a full-size OOF array is about 3 GB per run; blending reads it in chunks.
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise KitError(f"{path}: not a readable .npy file ({type(exc).__name__}); {_remedy(path)}") from None
    if array.ndim != 3 or array.shape[1:] != (n_points, 2) or (rows is not None and len(array) != rows):
        expected = f"({'rows' if rows is None else rows}, {n_points}, 2)"
        raise KitError(f"{path}: shape {array.shape}, expected {expected}")
    return array


def load_run(path: str | Path) -> Run:
    """Load a finished run folder.

    Raises:
        KitError: a file is missing, unreadable, or the shapes disagree with ``metrics.json``.
    """
    return RunDir(Path(path)).load()


def _without_other_family_keys(tree: dict) -> dict:
    """Runs of kits before model families owned their config sections list every family's keys: drop the others."""
    import kit.models  # noqa: F401  (registers the families' config sections)
    from kit.config import DEFAULT_FAMILY, family_config

    model = tree.get("model")
    if isinstance(model, dict):
        config = family_config(str(model.get("family", DEFAULT_FAMILY)))
        if config is not None:
            tree = tree | {"model": {k: v for k, v in model.items() if k in config.model_fields}}
    return tree


@dataclass(frozen=True)
class RunDir:
    """The folder of one run, and every read and write of it."""

    path: Path

    @classmethod
    def under(cls, out_dir: str | Path, name: str) -> RunDir:
        """``out_dir/name``; the name must be a plain name so the run can't land outside ``out_dir``."""
        return cls(Path(out_dir) / check_name(name, "run name"))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pipeline_file(self) -> Path:
        return self.path / PIPELINE_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold{fold}"

    def checkpoint(self, fold: int, kind: Literal["best", "last"]) -> Path:
        return self.fold_dir(fold) / f"{kind}.pt"

    def is_run(self) -> bool:
        return self.pipeline_file.is_file()

    def is_finished(self) -> bool:
        return self.metrics_file.is_file()

    # --- reading -------------------------------------------------------------------------------------------------

    def read_pipeline(self) -> Pipeline:
        """The run's pipeline, validated (which imports every model family, and with them torch)."""
        from kit.config import pipeline_from_dict

        return pipeline_from_dict(_without_other_family_keys(self.read_pipeline_tree()), str(self.pipeline_file))

    def read_pipeline_tree(self) -> dict:
        """The run's ``pipeline.yaml`` as written (the resolved pipeline), not validated: cheap to read."""
        if not self.pipeline_file.is_file():
            raise KitError(f"{self.pipeline_file}: missing (not a kit run folder?)")
        try:
            tree = yaml.load(self.pipeline_file.read_text(), Loader=_YAML_LOADER) or {}
        except yaml.YAMLError as exc:
            raise KitError(f"{self.pipeline_file}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise KitError(f"{self.pipeline_file}: expected a mapping of pipeline sections")
        return tree

    def read_split(self) -> SplitInfo:
        if not self.split_file.is_file():
            raise KitError(f"{self.split_file}: missing (not a kit run folder?)")
        return _read_record(self.split_file, SplitInfo)

    def read_flip_permutation(self) -> np.ndarray | None:
        from kit.data.flip import load_permutation

        path = self.path / FLIP_FILE
        return load_permutation(path) if path.is_file() else None

    def read_fold(self, fold: int) -> FoldSummary | None:
        """The fold's summary, or None while it is not finished."""
        path = self.fold_dir(fold) / DONE_FILE
        return _read_record(path, FoldSummary) if path.is_file() else None

    def finished_folds(self, k: int) -> dict[int, FoldSummary]:
        return {fold: summary for fold in range(k) if (summary := self.read_fold(fold)) is not None}

    def fold_predictions(self, fold: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """The fold's (OOF rows, P, 2) and (test rows, P, 2) predictions."""
        folder = self.fold_dir(fold)
        return _load_array(folder / OOF_FILE, n_points), _load_array(folder / TEST_FILE, n_points)

    def read_metrics(self) -> RunMetrics:
        if not self.metrics_file.is_file():
            raise KitError(f"{self.metrics_file}: missing (is the run finished?)")
        return _read_record(self.metrics_file, RunMetrics)

    def load(self) -> Run:
        """The finished run.

        Raises:
            KitError: a file is missing, unreadable, or the shapes disagree with ``metrics.json``.
        """
        for path in (self.path / OOF_FILE, self.path / TEST_FILE, self.metrics_file):
            if not path.is_file():
                raise KitError(f"{path}: missing (is the run finished?)")
        metrics = self.read_metrics()
        oof = _load_array(self.path / OOF_FILE, metrics.split.n_points)
        test = _load_array(self.path / TEST_FILE, metrics.split.n_points)
        return Run(path=self.path, name=self.path.name, oof=oof, test=test, metrics=metrics, split=metrics.split)

    # --- claiming and writing ------------------------------------------------------------------------------------

    def check_folds(self, identity: Identity, k: int, allow_mixed: bool = False) -> dict[int, FoldSummary]:
        """The finished folds, all of this identity.

        Args:
            allow_mixed: accept folds trained with other numerics (threads, device); the run records the mix.

        Raises:
            KitError: a finished fold was produced from other labels, images, split, pipeline, kit version or (without
                ``allow_mixed``) numerics, naming the fold folder, what changed and the remedy.
        """
        finished = self.finished_folds(k)
        for fold, summary in finished.items():
            check_identity(self.fold_dir(fold), summary.identity, identity, self.name, allow_mixed)
        return finished

    @contextlib.contextmanager
    def claim(
        self,
        pipeline: Pipeline,
        split: SplitInfo,
        folds: Sequence[int],
        flip_perm: np.ndarray | None = None,
        identity: Identity | None = None,
        allow_mixed: bool = False,
    ) -> Iterator[dict[int, FoldSummary]]:
        """Lock ``folds`` of the run for this process and record its pipeline and split; yields the finished folds.

        A run with no finished fold is not a claim: its pipeline and split are replaced, and checkpoints of
        another identity are discarded, so that a corrected command starts cleanly.

        Args:
            identity: what the folds are trained from (default: ``Identity.of(pipeline, split)``).
            allow_mixed: accept finished folds and checkpoints of other numerics (``check_folds``).

        Raises:
            KitError: finished folds of another identity, or a fold locked by a live process.
        """
        identity = identity or Identity.of(pipeline, split)
        k = max(folds, default=-1) + 1
        finished = self.check_folds(identity, max(k, self.known_folds()), allow_mixed)
        locks: list[Path] = []
        try:
            for fold in folds:
                if fold in finished:
                    continue
                self.fold_dir(fold).mkdir(parents=True, exist_ok=True)
                lock = self.fold_dir(fold) / LOCK_FILE
                acquire_lock(lock, f"fold {fold}")
                locks.append(lock)
                for leftover in self.fold_dir(fold).glob(".*.tmp"):  # from a killed writer: the fold is ours now
                    leftover.unlink(missing_ok=True)
                self._discard_foreign_checkpoint(fold, identity, allow_mixed)
            # another process may have finished
            finished = self.check_folds(identity, max(k, self.known_folds()), allow_mixed)
            self.record(pipeline, split, flip_perm)
            yield finished
        finally:
            for lock in locks:
                release_lock(lock)

    def record(self, pipeline: Pipeline, split: SplitInfo, flip_perm: np.ndarray | None) -> None:
        """Write the run's pipeline, split and flip permutation."""
        from kit.config import dump_pipeline
        from kit.data.flip import save_permutation

        write_text(self.pipeline_file, dump_pipeline(pipeline))
        write_json(self.split_file, split.to_dict())
        if flip_perm is not None:
            save_permutation(self.path / FLIP_FILE, flip_perm)
        else:
            (self.path / FLIP_FILE).unlink(missing_ok=True)

    def known_folds(self) -> int:
        """1 + the highest fold folder number present (0 without any)."""
        folds = [int(p.name[4:]) for p in self.path.glob("fold*") if p.name[4:].isdigit()] if self.path.is_dir() else []
        return max(folds, default=-1) + 1

    def _discard_foreign_checkpoint(self, fold: int, identity: Identity, allow_mixed: bool = False) -> None:
        """Remove a resumable checkpoint written under another identity (the run was not claimed by it).

        A checkpoint of the same training under other numerics is not discarded: resuming it is refused (naming the
        remedy) unless ``allow_mixed``, and then the fold records the mix.

        Raises:
            KitError: the checkpoint differs only in its numerics and ``allow_mixed`` is not set.
        """
        from kit.checkpoint import read_identity

        last = self.checkpoint(fold, "last")
        if not last.is_file():
            return
        saved = read_identity(last)  # unreadable checkpoints raise, naming the file
        if saved is not None and saved.matches(identity, numerics=False):
            if not allow_mixed and saved.numerics != identity.numerics:
                raise KitError(_numerics_message(last, saved.numerics, identity.numerics, "was saved"))
            return
        last.unlink()
        self.checkpoint(fold, "best").unlink(missing_ok=True)

    def write_fold(self, fold: int, summary: FoldSummary, oof: np.ndarray, test: np.ndarray) -> None:
        """Write a finished fold: its predictions, then ``done.json`` last."""
        folder = self.fold_dir(fold)
        save_npy(folder / OOF_FILE, np.asarray(oof, dtype=np.float32))
        save_npy(folder / TEST_FILE, np.asarray(test, dtype=np.float32))
        write_json(folder / DONE_FILE, summary.model_dump(mode="json"))

    def assemble(
        self,
        pipeline: Pipeline,
        split: SplitInfo,
        truth: np.ndarray,
        folds: np.ndarray,
        lineage: Sequence[str] = (),
        source_oof_mse: float | None = None,
        report: Callable | None = None,
        warn: Callable[[str], None] = print,
        nme_points: tuple[int, int] | None = None,
        identity: Identity | None = None,
        allow_mixed: bool = False,
        progress: Callable[[int, str], contextlib.AbstractContextManager[Callable[[int], None]]] | None = None,
    ) -> RunMetrics | None:
        """Combine the finished folds into ``oof.npy``, ``test.npy``, ``report.png`` and ``metrics.json``.

        The arrays are streamed in row chunks (``oof.npy`` fold rows by fold rows, ``test.npy`` as the folds' mean),
        and scored on the way: memory stays at a chunk whatever the size of the data.

        Args:
            truth: (N, P, 2) training points in original pixels (memory-mapped is fine); folds: (N,) fold of each row.
            report: optional ``report(path, summaries, oof, scores)`` that writes ``report.png`` from the written
                (memory-mapped) OOF array and its ``kit.metrics.Scores`` (never fatal: a failure is passed to ``warn``).
            nme_points: the two points whose distance is the face size for the run's and folds' NME (None: the
                face box, ``kit.metrics``).
            identity: what the folds must have been trained from (default: ``Identity.of(pipeline, split)``).
            allow_mixed: accept folds of other numerics; ``RunMetrics.mixed_numerics`` lists them.
            progress: ``progress(total, description)``, a context that yields ``advance(rows)``: a progress bar of
                the rows written (such as ``kit.progress.Reporter.progress``).

        Returns:
            The run's metrics, or None while some folds are not finished.
        """

        k = int(folds.max()) + 1
        identity = identity or Identity.of(pipeline, split)
        finished = self.check_folds(identity, k, allow_mixed)
        if len(finished) < k:
            return None
        summaries = [finished[f] for f in range(k)]
        predictions = [self.fold_predictions(fold, truth.shape[1]) for fold in range(k)]
        self._check_rows(predictions, folds)
        started = time.perf_counter()
        total = len(truth) + len(predictions[0][1])
        bar = progress(total, "writing oof.npy, test.npy") if progress is not None else _no_progress()
        with self._assembly_lock(), bar as advance:
            return self._write_run(
                pipeline,
                split,
                identity,
                truth,
                folds,
                predictions,
                summaries,
                lineage,
                source_oof_mse,
                report,
                warn,
                started,
                nme_points,
                advance,
            )

    def _check_rows(self, predictions: list[tuple[np.ndarray, np.ndarray]], folds: np.ndarray) -> None:
        """Each fold's OOF rows are its rows of ``folds``; every fold predicted the same test rows."""
        for fold, (oof, test) in enumerate(predictions):
            rows = int((folds == fold).sum())
            if len(oof) != rows:
                raise KitError(f"{self.fold_dir(fold) / OOF_FILE}: {len(oof)} rows, fold {fold} has {rows}")
            if len(test) != len(predictions[0][1]):
                raise KitError(
                    f"{self.fold_dir(fold) / TEST_FILE}: {len(test)} rows, fold 0 predicted {len(predictions[0][1])}"
                )

    @contextlib.contextmanager
    def _assembly_lock(self) -> Iterator[None]:
        """One assembler at a time; temp files a killed assembler left in the run folder are removed."""
        lock = self.path / LOCK_FILE
        # Two last folds finishing together both assemble: the second waits, then writes the same run again.
        wait_for_lock(lock, "the run", seconds=ASSEMBLY_WAIT_SECONDS)
        try:
            for leftover in self.path.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
            yield
        finally:
            release_lock(lock)

    def _write_oof(
        self,
        truth: np.ndarray,
        folds: np.ndarray,
        oofs: list[np.ndarray],
        nme_points: tuple[int, int] | None,
        advance: Callable[[int], None],
    ) -> tuple[float, np.ndarray]:
        """Write ``oof.npy`` in row chunks from the folds' OOF rows; return its MSE and per-face NME."""
        from kit.metrics import face_sizes, mse, nme_per_face

        fold_rows = [np.flatnonzero(folds == fold) for fold in range(len(oofs))]
        sizes = face_sizes(truth, nme_points)
        per_face = np.empty(len(truth), dtype=np.float64)
        sse = 0.0
        with npy_writer(self.path / OOF_FILE, truth.shape) as write:
            for rows, true in row_chunks(truth):
                block = np.empty(true.shape, dtype=np.float32)
                for oof, where in zip(oofs, fold_rows, strict=True):
                    first, last = np.searchsorted(where, [rows.start, rows.stop])
                    block[where[first:last] - rows.start] = read_rows(oof, slice(first, last))
                write(block)
                sse += mse(block, true) * block.size
                per_face[rows] = nme_per_face(block, true, sizes=sizes[rows])
                advance(len(block))
        return sse / truth.size, per_face

    def _write_test(self, tests: list[np.ndarray], advance: Callable[[int], None]) -> None:
        """Write ``test.npy``, the mean of the folds' test predictions, in row chunks (bit for bit ``np.mean``'s)."""
        with npy_writer(self.path / TEST_FILE, tests[0].shape) as write:
            for rows, total in row_chunks(tests[0], dtype=np.float32):
                for test in tests[1:]:
                    total += read_rows(test, rows)
                write(np.true_divide(total, np.intp(len(tests)), out=total, casting="unsafe"))
                advance(len(total))

    @staticmethod
    def _nme(summaries, per_face, folds, nme_points) -> dict:
        """The run's NME fields of ``RunMetrics``, with its folds' scores (each fold's NME from the same OOF rows
        and normalisation as the run's)."""
        from kit.metrics import nme_summary

        scores = []
        for s in summaries:
            nme, failure_rate = nme_summary(per_face[folds == s.fold])
            scores.append(s.score().model_copy(update={"nme": nme, "failure_rate": failure_rate}))
        oof_nme, oof_failure_rate = nme_summary(per_face)
        return {
            "folds": tuple(scores),
            "oof_nme": oof_nme,
            "oof_failure_rate": oof_failure_rate,
            "nme_points": nme_points,
        }

    def _write_run(
        self,
        pipeline,
        split,
        identity,
        truth,
        folds,
        predictions,
        summaries,
        lineage,
        source_oof_mse,
        report,
        warn,
        started,
        nme_points,
        advance,
    ) -> RunMetrics:
        from kit.metrics import Scores

        oof_mse, per_face = self._write_oof(truth, folds, [oof for oof, _ in predictions], nme_points, advance)
        self._write_test([test for _, test in predictions], advance)
        nme = self._nme(summaries, per_face, folds, nme_points)
        if report is not None:
            try:
                oof = _load_array(self.path / OOF_FILE, truth.shape[1], len(truth))
                report(self.report_file, summaries, oof, Scores(oof_mse, nme["oof_nme"], nme["oof_failure_rate"]))
            except Exception as exc:  # the report is a convenience; never lose the run over a plot
                warn(f"{self.report_file} not written: {type(exc).__name__}: {exc}")
        metrics = RunMetrics(
            name=pipeline.name,
            family=pipeline.model.family,
            backbone=pipeline.model.backbone,
            oof_mse=oof_mse,
            **nme,  # folds, oof_nme, oof_failure_rate, nme_points
            wall_seconds=sum(s.wall_seconds for s in summaries),
            images_per_second=float(np.mean([s.images_per_second for s in summaries])),
            tta=pipeline.tta.model_dump(),
            split=split,
            identity=identity,
            lineage=tuple(lineage),
            source_oof_mse=source_oof_mse,
            report_seconds=time.perf_counter() - started,
            mixed_numerics=_mixed_numerics(summaries),
        )
        write_json(self.metrics_file, metrics.model_dump(mode="json"))  # written last: the run is finished
        return metrics


@contextlib.contextmanager
def _no_progress() -> Iterator[Callable[[int], None]]:
    yield lambda rows: None


def _mixed_numerics(summaries: Sequence[FoldSummary]) -> tuple[Numerics, ...]:
    """Every numerics the folds were trained with, in fold order, when there is more than one; else ()."""
    seen: list[Numerics] = []
    for summary in summaries:
        for numerics in (summary.identity.numerics, *summary.mixed_numerics):
            if numerics is not None and numerics not in seen:
                seen.append(numerics)
    return tuple(seen) if len(seen) > 1 else ()


@contextlib.contextmanager
def new_run_dir(target: RunDir, force: bool) -> Iterator[RunDir]:
    """A fresh run folder written beside ``target`` and moved onto it when complete.

    Without ``force`` an existing target is refused; with it, it is replaced only once the new run is complete
    (a failure leaves the old run as it was). Only kit runs are ever replaced.

    Raises:
        KitError: the target exists (without force) or is not a kit run.
    """
    if target.path.exists():
        if not force:
            raise KitError(f"{target.path}: exists (choose another name, or --force to replace it)")
        if not target.is_run():
            raise KitError(f"{target.path}: exists and is not a kit run; not replacing it")
    for leftover in target.path.parent.glob(f".{target.name}.*"):  # staging folders of killed processes
        pid = leftover.name.rsplit(".", 1)[-1].removeprefix("tmp").removeprefix("old")
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = target.path.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield RunDir(staging)
        old = target.path.with_name(f".{target.name}.old{os.getpid()}")
        if target.path.exists():
            os.replace(target.path, old)
        os.replace(staging, target.path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
