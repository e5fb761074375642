"""The one record of a blend or stack: ``NAME.json``, what a person reads, and ``NAME.npz`` beside it, the fitted
parameters (``kit.ensemble.params``) whose sha256 the JSON records. ``kit blend`` and ``kit stack`` write it
(``write_record``); everything else reads it (``read_record``).

The record names its member runs by identity, with paths relative to its own folder: it resolves them from any
working directory, and still does when moved together with them (``member_paths``, ``member_runs``). ``apply``
combines the runs' predictions of new images with the model fitted on all folds; ``apply_fold`` with the model fitted
without fold k, so that fold k's pseudo-labels never come from a model that saw fold k's labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from kit.ensemble.nested import PREDICT_ROWS
from kit.ensemble.params import ALL, Params, check_params, fold_key, predictor
from kit.ensemble.rows import run_blocks
from kit.ensemble.stack_nested import Model
from kit.ensemble.stats import rows_per_chunk
from kit.ensemble.weights import Method
from kit.errors import KitError
from kit.io import atomic_path, file_sha256
from kit.runs import Identity, RunDir, SplitInfo

NOT_A_RECORD = "not a kit blend or stack record"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataRecord(_Frozen):
    """The competition tables the ensemble was fitted on, by content hash."""

    dir: str  # the competition folder, absolute
    folds_csv_sha256: str
    landmarks_csv_sha256: str
    test_points_csv_sha256: str
    n_folds: int = Field(ge=2)


class Member(_Frozen):
    """A member run, by identity."""

    run: str  # its label: the run's name, or its path where two runs share a name
    path: str  # relative to the record's folder
    identity: Identity | None  # what trained it (None: a run of an older kit)
    sha256: dict[str, str]  # its predictions' and metrics' files, when the ensemble was fitted


class RunEntry(_Frozen):
    """A member's scores and weight, as the table lists them."""

    run: str
    oof_mse: float  # against the competition's landmarks.csv
    oof_nme: float  # percent of the face size
    oof_failure_rate: float  # percent of faces whose NME is above 10%
    weight: float  # the run's weight, averaged over points (and coordinates) where weights are per point


class ArraysFile(_Frozen):
    """The sidecar of fitted parameters."""

    file: str  # NAME.npz, in the record's folder
    sha256: str


class FoldModel(_Frozen):
    """The model scored on ``fold``: fitted on the other folds only."""

    fold: int
    fitted_on: tuple[int, ...]


class EnsembleRecord(_Frozen):
    """What a blend or stack is made of, how it scores and where its fitted parameters are (``BlendRecord``,
    ``StackRecord``). Read with ``read_record``: the parameters come with it (``params``)."""

    kind: Literal["blend", "stack"]
    name: str
    method: str
    submission: str  # NAME.csv, beside the record
    submission_sha256: str | None = None  # filled when written
    arrays: ArraysFile | None = None  # filled when written
    data: DataRecord
    split: SplitInfo  # the member runs' split (rows, points, folds and labels fingerprint)
    inputs: tuple[Member, ...] = Field(min_length=1)
    runs: tuple[RunEntry, ...]
    best_run: str
    in_sample_mse: float  # the model fitted on all folds, scored on the rows it was fitted on (optimistic)
    in_sample_nme: float
    in_sample_failure_rate: float
    nme_points: tuple[int, int] | None  # the face size's two points for NME; None: the face box
    nme_note: str
    fold_models: tuple[FoldModel, ...]

    _params: Params = PrivateAttr(default_factory=Params)

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleRecord:
        labels = [member.run for member in self.inputs]
        if [entry.run for entry in self.runs] != labels:
            raise ValueError("'runs' must list the runs of 'inputs', in their order")
        if [model.fold for model in self.fold_models] != list(range(self.data.n_folds)):
            raise ValueError(f"'fold_models' must list folds 0..{self.data.n_folds - 1} (data.n_folds)")
        if self.arrays is not None and Path(self.arrays.file).name != self.arrays.file:
            raise ValueError("'arrays.file' must be a file name in the record's folder")
        return self

    @property
    def cv(self) -> tuple[float, float, float]:
        """The nested-CV (MSE, NME, failure rate) of the submission."""
        raise NotImplementedError

    @property
    def run_names(self) -> tuple[str, ...]:
        return tuple(member.run for member in self.inputs)

    @property
    def params(self) -> Params:
        """The fitted parameters, by name (``kit.ensemble.params``), read-only."""
        if not self._params:
            raise KitError(
                f"{self.kind} '{self.name}': its fitted parameters are not loaded (read it with read_record)"
            )
        return self._params

    def with_params(self, params: Mapping[str, np.ndarray]) -> EnsembleRecord:
        """The record holding ``params`` (as fitted, or as read from its NAME.npz)."""
        copy = self.model_copy()
        copy._params = Params(params)
        return copy

    def member_paths(self, record_path: str | Path) -> list[Path]:
        """The member runs' folders, absolute, for the record at ``record_path``."""
        folder = Path(record_path).absolute().parent
        return [(folder / member.path).resolve() for member in self.inputs]

    def member_runs(self, record_path: str | Path) -> list[RunDir]:
        """The member runs, checked to be the finished runs the ensemble was fitted on.

        Raises:
            KitError: naming the record and the first run that is missing, unfinished or another run (retrained).
        """
        runs = []
        for member, path in zip(self.inputs, self.member_paths(record_path), strict=True):
            run = RunDir(path)
            where = f"{record_path}: run '{member.run}'"
            if not run.is_finished():
                state = "not finished" if path.is_dir() else "not found"
                raise KitError(f"{where} {state} at {path} (moved or deleted since the {self.kind} was made?)")
            if not _same_run(run, member):
                raise KitError(f"{where} at {path} is not the run the {self.kind} was made of (retrained since?)")
            runs.append(run)
        return runs


def _same_run(run: RunDir, member: Member) -> bool:
    """Whether ``run`` is ``member``: its identity, or for a run of an older kit its metrics file, is unchanged."""
    if member.identity is not None:
        return run.read_metrics().identity == member.identity
    recorded = member.sha256.get(run.metrics_file.name)
    return recorded is None or recorded == file_sha256(run.metrics_file)


class BlendRecord(EnsembleRecord):
    """``kit blend``'s record: the runs' weights."""

    kind: Literal["blend"] = "blend"
    method: Method
    blend_mse: float  # nested CV: comparable with the runs' OOF MSE
    blend_mse_note: str = "nested CV: weights fitted on the other folds, scored on the held-out fold"
    blend_fold_mse: tuple[float, ...]
    blend_nme: float
    blend_failure_rate: float
    weights: dict[str, float]  # each run's weight fitted on all folds (per-point weights: their mean over points)
    fit: dict[str, Any]  # the method's details: counts, the chosen shrinkage and its CV errors

    @property
    def cv(self) -> tuple[float, float, float]:
        return self.blend_mse, self.blend_nme, self.blend_failure_rate


class BestBlend(_Frozen):
    """The lowest nested-CV MSE of every blend method over the stack's runs, each as ``kit blend`` scores it."""

    method: Method
    mse: float
    nme: float
    failure_rate: float
    fold_mse: tuple[float, ...]
    method_mse: dict[str, float]


class RidgeInfo(_Frozen):
    """The ridge stacker (stage 1 of ``pca-ridge``) fitted on all folds."""

    strength: str
    strength_grid: tuple[str, ...]
    strength_note: str = "times each coordinate's mean feature variance; inf: the runs' mean plus a bias"
    cv_sse: dict[str, float] | None  # leave-one-fold-out error of each strength (None: one fold to fit on)
    weights: dict[str, float]  # each run's weight, averaged over points and coordinates


class ShapeInfo(_Frozen):
    """The shared-error correction of ``pca-ridge`` fitted on all folds."""

    components: int
    components_grid: tuple[int, ...]
    strength: str
    strength_grid: tuple[str, ...]
    explained_variance: tuple[float, ...]
    cv_sse: dict[str, float] | None


class Stacker(_Frozen):
    ridge: RidgeInfo
    shape: ShapeInfo | None = None  # pca-ridge only


class StackFoldModel(FoldModel):
    ridge_strength: str
    components: int | None = None  # pca-ridge only
    shape_strength: str | None = None  # pca-ridge only


class StackRecord(EnsembleRecord):
    """``kit stack``'s record: the stacker's choices, scored against the best blend of the same runs."""

    kind: Literal["stack"] = "stack"
    method: Model
    weight_note: str = "each run's ridge weight (stage 1 of pca-ridge), averaged over points and coordinates"
    stack_mse: float  # nested CV: comparable with the runs' OOF MSE and the blend's nested-CV MSE
    stack_mse_note: str = (
        "nested CV: the stacker, its inner-CV choices and PCA basis fitted on the other folds, scored on the "
        "held-out fold"
    )
    stack_fold_mse: tuple[float, ...]
    stack_nme: float
    stack_failure_rate: float
    in_sample_note: str = "optimistic: the stacker fitted on all folds, scored on the same rows"
    best_blend: BestBlend
    beats_best_blend: bool
    gain_over_best_blend: float
    stacker: Stacker
    fold_models: tuple[StackFoldModel, ...]

    @property
    def cv(self) -> tuple[float, float, float]:
        return self.stack_mse, self.stack_nme, self.stack_failure_rate


_KINDS: dict[str, type[EnsembleRecord]] = {"blend": BlendRecord, "stack": StackRecord}


def arrays_path(record_path: str | Path) -> Path:
    """Where a record's fitted parameters are written: NAME.npz beside NAME.json."""
    return Path(record_path).with_suffix(".npz")


def relative_path(run_dir: str | Path, record_dir: str | Path) -> str:
    """``run_dir`` relative to the record's folder, as the record names it."""
    return Path(os.path.relpath(Path(run_dir).resolve(), Path(record_dir).resolve())).as_posix()


def _save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` whose bytes depend on the arrays only (``np.savez`` stamps the time into the archive)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def write_record(path: str | Path, record: EnsembleRecord, files: contextlib.ExitStack | None = None) -> EnsembleRecord:
    """Write ``record``'s parameters to NAME.npz and the record, with the npz's sha256, to ``path`` (NAME.json).

    Each file is written under a temporary name and renamed when done (the npz first).

    Args:
        files: the caller's stack of ``kit.io.atomic_path`` files: the two are renamed with the others when it exits
            (a result's files appear together or not at all).

    Returns:
        The record as written.
    """
    path = Path(path)
    npz = arrays_path(path)
    with contextlib.ExitStack() as own:
        stack = files if files is not None else own
        json_tmp = stack.enter_context(atomic_path(path))
        npz_tmp = stack.enter_context(atomic_path(npz))  # entered last: renamed first
        _save_arrays(npz_tmp, record.params)
        written = record.model_copy(update={"arrays": ArraysFile(file=npz.name, sha256=file_sha256(npz_tmp))})
        json_tmp.write_text(json.dumps(written.model_dump(mode="json"), indent=2) + "\n")
    return written


def _validate(path: Path, tree: Any) -> EnsembleRecord:
    kind = tree.get("kind") if isinstance(tree, dict) else None
    if kind not in _KINDS:
        found = "missing" if kind is None else f"{kind!r}"
        raise KitError(f"{path}: {NOT_A_RECORD} (key 'kind': {found}, expected 'blend' or 'stack')")
    try:
        return _KINDS[kind].model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise KitError(f"{path}: {NOT_A_RECORD} (key '{key}': {first['msg']})") from None


def _read_arrays(path: Path, record: EnsembleRecord) -> dict[str, np.ndarray]:
    remedy = f"run kit {record.kind} again to write it"
    if record.arrays is None:
        raise KitError(f"{path}: {NOT_A_RECORD} (key 'arrays': missing); {remedy}")
    npz = path.parent / record.arrays.file
    if not npz.is_file():
        raise KitError(f"{npz}: missing (the fitted parameters of {path.name}); {remedy}")
    digest = file_sha256(npz)
    if digest != record.arrays.sha256:
        raise KitError(
            f"{npz}: sha256 {digest[:12]} is not the {record.arrays.sha256[:12]} that {path.name} records (changed "
            f"since it was written); {remedy}"
        )
    try:
        with np.load(npz, allow_pickle=False) as archive:
            params = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise KitError(f"{npz}: unreadable ({type(exc).__name__}: {exc}); {remedy}") from None
    n_runs, n_points = len(record.inputs), record.split.n_points
    problem = check_params(params, record.kind, record.method.value, n_runs, n_points, record.data.n_folds)
    if problem is not None:
        raise KitError(f"{npz}: {problem}; {remedy}")
    return params


def read_record(path: str | Path) -> EnsembleRecord:
    """A blend's or stack's NAME.json (a ``BlendRecord`` or ``StackRecord``) with its fitted parameters.

    Raises:
        KitError: one line naming the file: unreadable, not a record (naming the key: unknown, missing or invalid),
            or its NAME.npz missing, changed since it was written (sha256), or not the record's parameters.
    """
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    record = _validate(path, tree)
    return record.with_params(_read_arrays(path, record))


def _apply(record: EnsembleRecord, key: str, predictions: Sequence[np.ndarray], description: str) -> np.ndarray:
    n_runs, n_points = len(record.inputs), record.split.n_points
    if len(predictions) != n_runs:
        raise KitError(f"{record.kind} '{record.name}': {len(predictions)} runs' predictions given, it has {n_runs}")
    shapes = {np.shape(p) for p in predictions}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[1:] != (n_points, 2):
        raise KitError(
            f"{record.kind} '{record.name}': predictions of shapes {sorted(shapes)}, expected (N, {n_points}, 2) each"
        )
    predict = predictor(record.params, record.kind, key)
    n = len(predictions[0])
    out = np.empty((n, n_points, 2), dtype=np.float32)
    step = rows_per_chunk(8 * 2 * n_points * n_runs)
    for rows, x in run_blocks(predictions, step, PREDICT_ROWS, description):
        out[rows] = predict(x).reshape(-1, n_points, 2)
    return out


def apply(record: EnsembleRecord, member_predictions: Sequence[np.ndarray], description: str = "") -> np.ndarray:
    """The ensemble's predictions (N, P, 2) float32 from its member runs' (each (N, P, 2), in ``record.inputs``'
    order), with the model fitted on all folds: how its submission was made from the runs' test predictions.

    Args:
        description: the pass's progress label (``kit.ensemble.rows.report_passes``).
    """
    return _apply(record, ALL, member_predictions, description or f"rows: {record.kind}")


def apply_fold(record: EnsembleRecord, k: int, member_predictions: Sequence[np.ndarray]) -> np.ndarray:
    """As ``apply``, with the model fitted without fold ``k`` (the one nested CV scored on fold k).

    Raises:
        KitError: the record has no fold ``k``.
    """
    if not 0 <= k < record.data.n_folds:
        raise KitError(f"{record.kind} '{record.name}': no fold {k} (fitted on {record.data.n_folds} folds)")
    return _apply(record, fold_key(k), member_predictions, f"rows: {record.kind} of fold {k}")
