"""``kit runs``: one row per run of a runs folder (a leaderboard of everything trained), and the diff of two runs.

Reads runs only through the run contract (``kit.runs``), the sweep's job records (``RUNS/.sweep/jobs``, for the
error of a failed job) and the blend and stack records of a submissions folder (``kit.ensemble.record``, which
name their runs). A finished run's OOF NME is the one it recorded, or, given the data (``NmeReference``),
recomputed from its ``oof.npy`` where it recorded another normalisation (or none: an older kit).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kit.ensemble.record import read_record
from kit.errors import KitError
from kit.locks import read_lock
from kit.metrics import face_sizes, nme_per_face, nme_summary
from kit.names import is_plain_name
from kit.runs import LOCK_FILE, RunDir, names_sha256, pipeline_sha256
from kit.sweep.records import JobRecord, pipeline_file, read_records

if TYPE_CHECKING:
    from kit.data.competition import Competition

SORT_KEYS = (
    "oof_mse",
    "oof_nme",
    "oof_failure_rate",
    "fold_mse",
    "name",
    "wall_seconds",
    "images_per_second",
    "folds_done",
    "state",
)
SHORT = 10  # characters of a hash shown


@dataclass
class RunRow:
    """One run as ``kit runs`` lists it (None: not known)."""

    name: str
    path: str
    state: str  # finished, partial, running, failed
    family: str | None = None
    backbone: str | None = None
    input_size: int | None = None
    epochs: int | None = None
    folds_done: int = 0
    folds_total: int | None = None  # None: unknown (an unfinished run, without --data)
    oof_mse: float | None = None  # all folds' OOF predictions (finished runs)
    oof_nme: float | None = None  # their NME, percent of the face size (None: not known)
    oof_failure_rate: float | None = None  # percent of faces whose NME is above 10%
    nme_points: tuple[int, int] | None = None  # the face size's two points for oof_nme; None: the face box
    fold_mse: float | None = None  # mean of the finished folds' MSE
    fold_mse_std: float | None = None  # their spread (standard deviation)
    wall_seconds: float | None = None
    images_per_second: float | None = None
    split_sha: str | None = None
    pipeline_sha: str | None = None
    error: str | None = None
    running: list[str] = field(default_factory=list)  # "fold K on HOST (pid P)" for each held fold lock
    blends: list[str] = field(default_factory=list)  # names of the blends (submissions) that use the run

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NmeReference:
    """The data's training landmarks and NME normalisation, to recompute a run's OOF NME against."""

    points: np.ndarray  # (N, P, 2) training landmarks (memory-mapped)
    nme_points: tuple[int, int] | None  # None: the face box
    train_names_sha256: str
    source: str = "true landmarks"  # the landmarks' table, as errors name it
    names: np.ndarray | None = None  # its file names, as errors name the rows

    @classmethod
    def of(cls, comp: Competition, nme_points: tuple[int, int] | None = None) -> NmeReference:
        """``comp``'s training faces, normalised by ``nme_points`` (default: the data's ``nme_points.txt``)."""
        pair = comp.resolve_nme_points(nme_points)
        names = comp.train.file_names
        return cls(comp.train.points, pair, names_sha256(names), str(comp.train_csv), names)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """(N,) face sizes: a pass over every label, made when a run's NME is first recomputed."""
        return face_sizes(self.points, self.nme_points, source=self.source, names=self.names)


def blend_users(submissions_dir: str | Path) -> dict[Path, list[str]]:
    """Resolved run path -> names of the blends and stacks in ``submissions_dir`` made of it (files that are not
    readable records are skipped)."""
    users: dict[Path, list[str]] = {}
    folder = Path(submissions_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = read_record(path)
        except KitError:
            continue
        for run_path in record.member_paths(path):
            users.setdefault(run_path, []).append(record.name)
    return users


def _live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held_locks(run: RunDir, k: int) -> list[str]:
    """The folds whose lock is held by a live process (or one on another host, which can't be checked)."""
    held, host = [], socket.gethostname()
    for fold in range(k):
        holder = read_lock(run.fold_dir(fold) / LOCK_FILE)
        if holder is not None and holder.pid > 0 and (holder.host != host or _live(holder.pid)):
            held.append(f"fold {fold} on {holder.host} (pid {holder.pid})")
    return held


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _oof_nme(run: RunDir, metrics, reference: NmeReference | None) -> tuple[float | None, float | None, tuple | None]:
    """The run's OOF NME, failure rate and normalisation: recorded, or recomputed against ``reference`` when the
    run recorded another normalisation (or none) and was trained on the same rows."""
    recorded = (metrics.oof_nme, metrics.oof_failure_rate, metrics.nme_points)
    if reference is None or (metrics.oof_nme is not None and metrics.nme_points == reference.nme_points):
        return recorded
    split = metrics.split
    if split.train_names_sha256 != reference.train_names_sha256 or split.n_points != reference.points.shape[1]:
        return recorded  # trained on other data: its own figure, if any
    oof = run.load().oof
    return *nme_summary(nme_per_face(oof, reference.points, sizes=reference.sizes)), reference.nme_points


def _describe_pipeline(row: RunRow, run: RunDir, validate: bool) -> None:
    """The row's model, input size and epochs from the run's pipeline; with ``validate``, its hash too.

    Validating a pipeline imports every model family (torch, timm: seconds): a finished run's hash is in its metrics,
    and the rest is read from its resolved ``pipeline.yaml`` as written.
    """
    if validate:
        pipeline = run.read_pipeline()
        row.family, row.backbone = pipeline.model.family, pipeline.model.backbone
        row.input_size, row.epochs = pipeline.input.size, pipeline.train.epochs
        row.pipeline_sha = pipeline_sha256(pipeline)[:SHORT]
        return
    tree = run.read_pipeline_tree()

    def value(section: str, key: str, kind: type):
        found = tree.get(section, {}).get(key) if isinstance(tree.get(section), dict) else None
        return found if isinstance(found, kind) and not isinstance(found, bool) else None

    row.family, row.backbone = value("model", "family", str), value("model", "backbone", str)
    row.input_size, row.epochs = value("input", "size", int), value("train", "epochs", int)


def run_row(
    run: RunDir,
    k: int | None = None,
    records: list[JobRecord] = (),
    blends=None,
    reference: NmeReference | None = None,
) -> RunRow:
    """The row of one run folder; what can't be read becomes the row's error (state ``failed``).

    Args:
        reference: the data's landmarks, to recompute the OOF NME of a run that recorded another normalisation.
    """
    row = RunRow(
        name=run.name, path=str(run.path), state="partial", blends=list((blends or {}).get(run.path.resolve(), []))
    )
    errors: list[str] = []
    metrics = None
    if run.is_finished():
        try:
            metrics = run.read_metrics()
        except KitError as exc:
            errors.append(str(exc))
    try:
        _describe_pipeline(row, run, validate=metrics is None or metrics.identity is None)
        row.split_sha = run.read_split().digest()[:SHORT]
    except KitError as exc:
        errors.insert(0, str(exc))
    total = len(metrics.folds) if metrics is not None else k
    known = total if total is not None else run.known_folds()
    try:
        summaries = run.finished_folds(known)
    except KitError as exc:
        errors.append(str(exc))
        summaries = {}
    row.folds_done, row.folds_total = len(summaries), total
    scores = [f.mse for f in metrics.folds] if metrics is not None else [s.mse for s in summaries.values()]
    row.fold_mse, row.fold_mse_std = _spread(scores)
    if metrics is not None:
        row.oof_mse, row.wall_seconds, row.images_per_second = (
            metrics.oof_mse,
            metrics.wall_seconds,
            metrics.images_per_second,
        )
        try:
            row.oof_nme, row.oof_failure_rate, row.nme_points = _oof_nme(run, metrics, reference)
        except KitError as exc:
            errors.append(str(exc))
        row.family, row.backbone = row.family or metrics.family, row.backbone or metrics.backbone
        if metrics.identity is not None:
            row.pipeline_sha, row.split_sha = (
                metrics.identity.pipeline_sha256[:SHORT],
                metrics.identity.split_sha256[:SHORT],
            )
    elif summaries:
        row.wall_seconds = sum(s.wall_seconds for s in summaries.values())
        row.images_per_second = statistics.fmean(s.images_per_second for s in summaries.values())
    row.running = _held_locks(run, known) if metrics is None else []
    failed = [r for r in records if r.run == run.name and r.state == "failed" and r.fold not in summaries]
    if metrics is not None and not errors:
        row.state = "finished"
    elif errors:
        row.state, row.error = "failed", errors[0]
    elif row.running:
        row.state = "running"
    elif failed:
        row.state, row.error = "failed", f"fold {failed[0].fold}: {failed[0].error}"
    return row


def _row_from_records(runs_dir: Path, name: str, records: list[JobRecord], k: int | None) -> RunRow:
    """A run that a sweep tried but that has no run folder (its jobs failed before claiming it)."""
    import kit.models  # noqa: F401  (registers the model families' config sections)
    from kit.config import load_pipeline

    row = RunRow(name=name, path=str(runs_dir / name), state="partial", folds_total=k)
    try:
        pipeline = load_pipeline(pipeline_file(runs_dir, name))
        row.family, row.backbone = pipeline.model.family, pipeline.model.backbone
        row.input_size, row.epochs = pipeline.input.size, pipeline.train.epochs
        row.pipeline_sha = pipeline_sha256(pipeline)[:SHORT]
    except KitError:
        pass
    failed = [r for r in records if r.state == "failed"]
    if failed:
        row.state, row.error = "failed", f"fold {failed[0].fold}: {failed[0].error}"
    elif any(r.state == "running" for r in records):
        row.state = "running"
    return row


def _sort_value(row: RunRow, key: str) -> tuple:
    value = getattr(row, key)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return (missing, value if not missing else 0, row.name)


def list_runs(
    runs_dir: str | Path,
    submissions_dir: str | Path = "submissions",
    sort: str = "oof_mse",
    folds: int | None = None,
    reference: NmeReference | None = None,
) -> list[RunRow]:
    """Every run under ``runs_dir``, best first by ``sort`` (runs without that value last).

    Args:
        folds: k of the split, when known (``--data``): an unfinished run's total folds.
        reference: the data's landmarks (``--data``): runs that recorded another NME normalisation (or none) get
            their OOF NME recomputed against them.

    Raises:
        KitError: ``runs_dir`` is not a folder, or ``sort`` is not a column.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise KitError(f"{runs_dir}: runs folder not found")
    if sort not in SORT_KEYS:
        raise KitError(f"--sort {sort}: choose one of {', '.join(SORT_KEYS)}")
    records = read_records(runs_dir)
    blends = blend_users(submissions_dir)
    rows = []
    for path in sorted(runs_dir.iterdir()):
        run = RunDir(path)
        if path.is_dir() and is_plain_name(path.name) and run.is_run():
            rows.append(run_row(run, folds, [r for r in records if r.run == path.name], blends, reference))
    listed = {row.name for row in rows}
    for name in sorted({r.run for r in records} - listed):
        if is_plain_name(name) and not (runs_dir / name).exists():
            rows.append(_row_from_records(runs_dir, name, [r for r in records if r.run == name], folds))
    return sorted(rows, key=lambda row: _sort_value(row, sort))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): tree}


def _resolve(runs_dir: Path, name: str) -> RunDir:
    inside = runs_dir / name
    run = RunDir(inside if is_plain_name(name) and inside.is_dir() else Path(name))
    if not run.is_run():
        raise KitError(f"{run.path}: not a kit run folder (no pipeline.yaml)")
    return run


@dataclass(frozen=True)
class RunDiff:
    a: str
    b: str
    keys: list[tuple[str, Any, Any]]  # (dotted key, value in a, value in b); a key one run lacks has None
    same_split: bool

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "same_split": self.same_split,
            "keys": [{"key": key, "a": va, "b": vb} for key, va, vb in self.keys],
        }


def diff_runs(runs_dir: str | Path, a: str, b: str) -> RunDiff:
    """The pipeline keys (dotted, without the name) whose values differ between runs ``a`` and ``b``.

    ``a`` and ``b`` are run names under ``runs_dir`` or run folders.

    Raises:
        KitError: one is not a run, or its pipeline is unreadable.
    """
    first, second = _resolve(Path(runs_dir), a), _resolve(Path(runs_dir), b)
    trees = [_flatten(run.read_pipeline().model_dump(mode="json", exclude={"name"})) for run in (first, second)]
    keys = [
        (key, trees[0].get(key), trees[1].get(key))
        for key in sorted(trees[0].keys() | trees[1].keys())
        if trees[0].get(key) != trees[1].get(key)
    ]
    return RunDiff(str(first.path), str(second.path), keys, first.read_split() == second.read_split())
