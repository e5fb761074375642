"""Experiment tracking (MLflow), optional and never in the way.

A kit run is an MLflow run (its folds are child runs): the resolved pipeline as params, per-epoch losses and
valid MSE/NME with the epoch as step, fold and run summaries, identity hashes as tags, ``report.png`` and the
pipeline as artifacts. Blends and stacks are runs of their own. The calls come at a few points only (run start,
epoch end, fold end, run end), never from the training step.

The store defaults to a SQLite file under the runs folder (``sqlite:///RUNS/mlflow.db``, artifacts in
``RUNS/mlartifacts``), so no server is needed; an ``http://`` URI logs to a tracking server. MLflow is the optional
``track`` extra and is imported only when tracking is on. The kit's own records stay the source of truth: a tracker
that fails (a server that is down, a locked store) costs one warning and is switched off; training goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit.errors import KitError
from kit.progress import EpochListener

if TYPE_CHECKING:
    from kit.config import Pipeline, TrackingConfig
    from kit.progress import Reporter
    from kit.runs import FoldSummary, Identity, RunDir, RunMetrics

URI_ENV = "KIT_TRACKING_URI"
EXPERIMENT_ENV = "KIT_TRACKING_EXPERIMENT"
DEFAULT_EXPERIMENT = "kit"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
INSTALL_HINT = "pip install -e '.[track]' (or pip install 'mlflow>=3,<4')"
_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
_PARAM_CHARS = 6000


class Track(str, Enum):
    """``--track``: where runs are logged besides the run folder."""

    none = "none"
    mlflow = "mlflow"


def default_uri(runs_dir: str | Path) -> str:
    """The embedded store: ``sqlite:////ABS/RUNS/mlflow.db``."""
    return f"sqlite:///{(Path(runs_dir).absolute() / STORE_FILE).as_posix()}"


def resolve_uri(
    track: Track | str | None, uri: str | None, config: TrackingConfig | None, runs_dir: str | Path
) -> str | None:
    """The tracking URI to log to, or None when tracking is off.

    Tracking is on with ``--track mlflow``, a ``tracking:`` section in the pipeline, ``--tracking-uri`` or
    ``$KIT_TRACKING_URI``; ``--track none`` turns it off whatever else says. The URI is the first of
    ``--tracking-uri``, ``$KIT_TRACKING_URI``, the pipeline's ``tracking.uri`` and the default store under
    ``runs_dir``.
    """
    track = Track(track) if track is not None else None
    if track is Track.none:
        return None
    env = os.environ.get(URI_ENV, "").strip() or None
    if track is None and config is None and env is None and uri is None:
        return None
    return uri or env or (config.uri if config is not None else None) or default_uri(runs_dir)


def _sqlite_folder(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


class Tracker:
    """An MLflow client that never raises into its caller: the first failure warns once and switches it off.

    Create it with ``open_tracker``; ``Tracker.off()`` is the disabled one (every call does nothing).
    """

    def __init__(self, client: Any = None, experiment_id: str | None = None, uri: str | None = None, warn=_stderr):
        self.client, self.experiment_id, self.uri, self._warn = client, experiment_id, uri, warn

    @classmethod
    def off(cls) -> Tracker:
        return cls()

    @property
    def on(self) -> bool:
        return self.client is not None

    def call(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()``, or None (with one warning, after which the tracker is off) when it fails."""
        if self.client is None:
            return None
        try:
            return action()
        except Exception as exc:  # a tracker must never stop the kit's work
            self._warn(_failure(self.uri, what, exc))
            self.client = None
            return None

    # --- thin wrappers over the MLflow client ---------------------------------------------------------------------

    def find(self, filters: dict[str, str], parent: str | None = None) -> str | None:
        """The newest run of the experiment whose tags equal ``filters`` (and whose parent is ``parent``)."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
        if parent is not None:
            clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")

        def search():
            runs = self.client.search_runs(
                [self.experiment_id], " and ".join(clauses), max_results=1, order_by=["attributes.start_time DESC"]
            )
            return runs[0].info.run_id if runs else None

        return self.call("search", search)

    def create(self, name: str, tags: dict[str, str], parent: str | None = None) -> str | None:
        tags = dict(tags) | ({"mlflow.parentRunId": parent} if parent else {})
        run = self.call("create run", lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name))
        return run.info.run_id if run is not None else None

    def log(
        self,
        run_id: str | None,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        if run_id is None or self.client is None:
            return
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_list = [Metric(key, float(value), now, step) for key, value in (metrics or {}).items() if _finite(value)]
        param_list = [Param(key, str(value)[:_PARAM_CHARS]) for key, value in (params or {}).items()]
        tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        for start in range(0, max(len(param_list), 1), _PARAMS_PER_CALL):
            chunk = param_list[start : start + _PARAMS_PER_CALL]
            first = start == 0
            self.call(
                "log",
                lambda chunk=chunk, first=first: self.client.log_batch(
                    run_id, metrics=metric_list if first else [], params=chunk, tags=tag_list if first else []
                ),
            )

    def artifacts(self, run_id: str | None, paths: Iterable[Path], folder: str | None = None) -> None:
        if run_id is None:
            return
        for path in paths:
            if Path(path).is_file():
                self.call("artifact", lambda path=path: self.client.log_artifact(run_id, str(path), folder))

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self.call("end run", lambda: self.client.set_terminated(run_id, status))

    def status(self, run_id: str | None, status: str = "RUNNING") -> None:
        if run_id is not None:
            self.call("update run", lambda: self.client.update_run(run_id, status=status))


def _failure(uri: str | None, what: str, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (
        f"warning: tracking to {uri} failed ({what}: {type(exc).__name__}: {first}); tracking is off for the rest "
        "of this command, the kit's own records are complete"
    )


def _finite(value) -> bool:
    try:
        return value is not None and float(value) == float(value) and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False


def _import_mlflow():
    # Fail fast against a server that is down (MLflow's defaults retry for minutes), unless the user set them.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise KitError(
            f"--track mlflow: MLflow is not installed; install the kit's tracking extra: {INSTALL_HINT}"
        ) from None
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.sql_alchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


def open_tracker(uri: str | None, experiment: str | None = None, warn: Callable[[str], None] = _stderr) -> Tracker:
    """A tracker logging to ``uri`` (None: the disabled one) in ``experiment`` (default ``$KIT_TRACKING_EXPERIMENT``,
    else ``kit``), created when missing; with the embedded SQLite store its artifacts go beside the database.

    A store that can't be reached is one warning and a disabled tracker.

    Raises:
        KitError: MLflow is not installed (naming the extra to install).
    """
    if uri is None:
        return Tracker.off()
    client_class = _import_mlflow()
    experiment = experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    folder = _sqlite_folder(uri)
    tracker = Tracker(None, None, uri, warn)
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        client = client_class(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = (folder / ARTIFACTS_DIR).as_uri() if folder is not None else None
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
    except Exception as exc:  # a store that is down: one warning, no tracking
        warn(_failure(uri, "connect", exc))
        return tracker
    tracker.client, tracker.experiment_id = client, experiment_id
    return tracker


# ---------------------------------------------------------------- what a kit run logs


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"model": {"backbone": "x"}}`` -> ``{"model.backbone": "x"}`` (lists and None as text)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def run_key(run: RunDir, identity: Identity | None) -> str:
    """What names one kit run in the store: its folder (on this host) and what it is trained from."""
    parts = [socket.gethostname(), str(run.path.absolute())]
    if identity is not None:
        parts += [
            identity.pipeline_sha256,
            identity.split_sha256,
            identity.labels_sha256 or "",
            identity.images_sha256 or "",
        ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _identity_tags(identity: Identity | None) -> dict[str, str]:
    if identity is None:
        return {}
    tags = {
        "kit.pipeline_sha256": identity.pipeline_sha256,
        "kit.split_sha256": identity.split_sha256,
        "kit.kit_version": identity.kit_version,
    }
    if identity.labels_sha256:
        tags["kit.labels_sha256"] = identity.labels_sha256
    if identity.images_sha256:
        tags["kit.images_sha256"] = identity.images_sha256
    if identity.numerics is not None:
        tags["kit.numerics"] = identity.numerics.describe()
    return tags


def _epoch_metrics(stats: dict) -> dict[str, float]:
    keys = ("train_loss", "valid_mse", "valid_nme", "images_per_second", "train_seconds", "valid_seconds")
    return {key: stats[key] for key in keys if stats.get(key) is not None}


class RunTracking:
    """One kit run as an MLflow run with a child run per fold (all calls do nothing when the tracker is off)."""

    def __init__(self, tracker: Tracker, run: RunDir, pipeline: Pipeline, identity: Identity | None, lineage=()):
        self.tracker, self.run, self.pipeline, self.identity = tracker, run, pipeline, identity
        self.key = run_key(run, identity)
        self.parent: str | None = None
        self.folds: dict[int, str | None] = {}
        if tracker.on:
            self.parent = self._parent(tuple(lineage))

    def _parent(self, lineage: tuple[str, ...]) -> str | None:
        from kit.locks import release_lock, wait_for_lock

        # Fold jobs of a sweep start together: one of them creates the parent run, the others find it.
        lock = self.run.path / ".tracking.lock"
        self.run.path.mkdir(parents=True, exist_ok=True)
        try:
            wait_for_lock(lock, "the run's tracking", seconds=60)
        except KitError:
            lock = None
        try:
            found = self.tracker.find({"kit.run_key": self.key, "kit.kind": "run"})
            if found is not None or not self.tracker.on:
                return found
            tags = {
                "kit.kind": "run",
                "kit.run": self.run.name,
                "kit.run_key": self.key,
                "kit.run_dir": str(self.run.path.absolute()),
                "kit.family": self.pipeline.model.family,
                "kit.backbone": self.pipeline.model.backbone,
                **_identity_tags(self.identity),
            }
            if lineage:
                tags["kit.lineage"] = ", ".join(lineage)
            parent = self.tracker.create(self.run.name, tags)
            params = flatten(self.pipeline.model_dump(mode="json", exclude={"tracking"}))
            self.tracker.log(parent, params=params)
            return parent
        finally:
            if lock is not None:
                release_lock(lock)

    def fold_started(self, fold: int) -> None:
        if self.parent is None:
            return
        filters = {"kit.run_key": self.key, "kit.kind": "fold", "kit.fold": str(fold)}
        child = self.tracker.find(filters, parent=self.parent)
        if child is None:
            child = self.tracker.create(
                f"{self.run.name}/fold{fold}", filters | {"kit.run": self.run.name}, self.parent
            )
        else:
            self.tracker.status(child, "RUNNING")  # resumed after an interruption
        self.folds[fold] = child

    def epoch_ended(self, fold: int, epoch: int, stats: dict) -> None:
        self.tracker.log(self.folds.get(fold), _epoch_metrics(stats), step=epoch + 1)

    def fold_finished(self, fold: int, summary: FoldSummary | None) -> None:
        child = self.folds.get(fold)
        if summary is not None:
            metrics = {
                "fold_mse": summary.mse,
                "fold_nme": summary.nme,
                "fold_failure_rate": summary.failure_rate,
                "best_epoch": summary.best_epoch + 1,
                "wall_seconds": summary.wall_seconds,
                "fold_images_per_second": summary.images_per_second,
            }
            self.tracker.log(child, metrics, step=summary.epochs)
        self.tracker.end(child, "FINISHED")

    def fold_stopped(self, fold: int, interrupted: bool) -> None:
        self.tracker.end(self.folds.get(fold), "KILLED" if interrupted else "FAILED")

    def run_finished(self, metrics: RunMetrics | None) -> None:
        if self.parent is None or metrics is None:
            return
        import numpy as np

        fold_mse = [f.mse for f in metrics.folds]
        summary = {
            "oof_mse": metrics.oof_mse,
            "oof_nme": metrics.oof_nme,
            "oof_failure_rate": metrics.oof_failure_rate,
            "fold_mse_mean": float(np.mean(fold_mse)),
            "fold_mse_std": float(np.std(fold_mse)),
            "wall_seconds": metrics.wall_seconds,
            "images_per_second": metrics.images_per_second,
        } | {f"fold{f.fold}_mse": f.mse for f in metrics.folds}
        self.tracker.log(self.parent, summary, tags={"kit.complete": "true"})
        self._mean_curves()
        self.tracker.artifacts(self.parent, [self.run.report_file, self.run.pipeline_file])
        self.tracker.end(self.parent, "FINISHED")

    def _mean_curves(self) -> None:
        """The folds' per-epoch curves averaged, on the parent run: runs compare in one chart."""
        import numpy as np

        histories = [s.history for s in self.run.finished_folds(self.run.known_folds()).values() if s.history]
        for epoch in range(min((len(h) for h in histories), default=0)):
            stats = [h[epoch].model_dump() for h in histories]
            means = {
                key: float(np.mean([s[key] for s in stats]))
                for key in ("train_loss", "valid_mse", "valid_nme")
                if all(s.get(key) is not None for s in stats)
            }
            self.tracker.log(self.parent, means, step=epoch + 1)

    def reporter(self, inner: Reporter) -> Reporter:
        """``inner`` that also logs each finished epoch."""
        return EpochListener(inner, self.epoch_ended)


# ---------------------------------------------------------------- backfill and ensembles


def export_run(tracker: Tracker, run: RunDir) -> str:
    """Log a finished run folder (folds, their epochs, summaries, artifacts) unless the store has it complete.

    Returns:
        ``exported``, ``present`` (already complete in the store) or ``skipped`` (not finished).
    """
    if not run.metrics_file.is_file():
        return "skipped"
    metrics = run.read_metrics()
    pipeline = run.read_pipeline()
    key = run_key(run, metrics.identity)
    if tracker.find({"kit.run_key": key, "kit.kind": "run", "kit.complete": "true"}) is not None:
        return "present"
    tracking = RunTracking(tracker, run, pipeline, metrics.identity, metrics.lineage)
    for fold, summary in sorted(run.finished_folds(len(metrics.folds)).items()):
        tracking.fold_started(fold)
        for stats in summary.history:
            tracking.epoch_ended(fold, stats.epoch, stats.model_dump())
        tracking.fold_finished(fold, summary)
    tracking.run_finished(metrics)
    return "exported" if tracker.on else "failed"


def export_runs(tracker: Tracker, runs: Sequence[RunDir]) -> dict[str, str]:
    """``export_run`` for each run folder: run name -> what happened."""
    return {run.name: export_run(tracker, run) for run in runs}


def track_ensemble(tracker: Tracker, record_path: Path, picture: Path | None = None) -> str | None:
    """Log a blend or stack (its NAME.json) as a run: nested-CV scores, its runs and their OOF scores, the record and
    picture as artifacts, linked to the runs' own MLflow runs where the store has them."""
    if not tracker.on:
        return None
    from kit.ensemble.record import read_record

    record = read_record(record_path)
    mse, nme, failure_rate = record.cv
    inputs = []
    for path in record.member_paths(record_path):
        found = tracker.find({"kit.run_dir": str(path.absolute()), "kit.kind": "run"})
        if found:
            inputs.append(found)
    tags = {
        "kit.kind": record.kind,
        "kit.ensemble": record.name,
        "kit.runs": ", ".join(record.run_names),
        "kit.submission": str(record_path.with_name(record.submission)),
    }
    if record.submission_sha256:
        tags["kit.submission_sha256"] = record.submission_sha256
    if inputs:
        tags["kit.input_run_ids"] = ", ".join(inputs)
    run_id = tracker.create(record.name, tags)
    metrics = {"cv_mse": mse, "cv_nme": nme, "cv_failure_rate": failure_rate}
    for item in record.runs:
        metrics[f"{item.run}.oof_mse"] = item.oof_mse
        metrics[f"{item.run}.weight"] = item.weight
    params = {"runs": ", ".join(record.run_names), "kind": record.kind}
    tracker.log(run_id, metrics, params=params)
    tracker.artifacts(run_id, [record_path, *([picture] if picture else [])])
    tracker.end(run_id, "FINISHED")
    return run_id


def tracker_for(
    track: Track | str | None,
    uri: str | None,
    config: TrackingConfig | None,
    runs_dir: str | Path,
    warn: Callable[[str], None] = _stderr,
) -> Tracker:
    """The tracker a command asked for (``resolve_uri``), opened; the disabled one when tracking is off.

    Raises:
        KitError: tracking is on and MLflow is not installed.
    """
    uri = resolve_uri(track, uri, config, runs_dir)
    return open_tracker(uri, config.experiment if config is not None else None, warn)
