"""What every second-level model over runs (``kit blend``, ``kit stack``) checks, records and writes.

The runs must share one split and match the competition folder; the outputs (NAME.csv, NAME.json with its
NAME.npz, NAME.png) go outside the data and the runs, never over earlier results unless forced, and appear together
or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.competition import Competition
from kit.data.folds import load_folds
from kit.ensemble.record import (
    DataRecord,
    EnsembleRecord,
    Member,
    RunEntry,
    arrays_path,
    relative_path,
    write_record,
)
from kit.errors import DataError, KitError
from kit.io import atomic_path, file_sha256, refuse_inside
from kit.metrics import FAILURE_NME, face_sizes, normalisation
from kit.names import check_name
from kit.runs import LABELS_CHANGED, Run, load_run, names_sha256
from kit.submit.format import write_submission


@dataclass(frozen=True)
class RunScore:
    """One input run of a blend or stack, as its table and record list it."""

    name: str
    path: Path
    oof_mse: float  # recomputed against landmarks.csv
    weight: float  # the run's weight (averaged over points for per-point weights)
    oof_nme: float  # percent of the face size, against landmarks.csv
    oof_failure_rate: float  # percent of faces whose NME is above 10%


def _short(digest: str) -> str:
    return digest[:12]


def check_same_split(runs: Sequence[Run]) -> None:
    """Refuse runs whose predictions are not aligned with the same split, rows and points.

    Raises:
        KitError: naming the first run that differs from the first one, and what differs.
    """
    first = runs[0]
    for run in runs[1:]:
        a, b = first.split, run.split
        if a.folds_sha256 != b.folds_sha256:
            raise KitError(
                f"{run.path}: trained on a different fold split than {first.path} (folds.csv sha256 "
                f"{_short(b.folds_sha256)} vs {_short(a.folds_sha256)}); blending across splits leaks held-out rows "
                "into the weights and inflates the score: retrain it on the same folds.csv"
            )
        for key, what in (("train_names_sha256", "training rows"), ("test_names_sha256", "test rows")):
            if getattr(a, key) != getattr(b, key):
                raise KitError(f"{run.path}: predicts different {what} than {first.path} ({key} differs)")
        if a.n_points != b.n_points:
            raise KitError(f"{run.path}: {b.n_points} points, {first.path} has {a.n_points}")
        if a.labels_sha256 is not None and b.labels_sha256 is not None and a.labels_sha256 != b.labels_sha256:
            raise KitError(f"{run.path}: trained on other labels than {first.path} ({LABELS_CHANGED})")


def check_matches_data(run: Run, comp: Competition) -> None:
    """Refuse a run whose split block or array shapes do not match the competition folder."""
    split = run.split
    digest = file_sha256(comp.folds_csv)
    if split.folds_sha256 != digest:
        raise KitError(
            f"{run.path}: trained on folds.csv sha256 {_short(split.folds_sha256)}, but {comp.folds_csv} is "
            f"{_short(digest)} (the split changed since the run: retrain or restore the old folds.csv)"
        )
    if split.n_points != comp.n_points:
        raise KitError(f"{run.path}: {split.n_points} points, {comp.train_csv} has {comp.n_points}")
    if split.train_names_sha256 != names_sha256(comp.train.file_names):
        raise KitError(f"{run.path}: its training rows differ from {comp.train_csv} (train_names_sha256)")
    if split.labels_sha256 is not None and split.labels_sha256 != comp.train.digest:
        raise KitError(
            f"{run.path}: trained on other labels than {comp.train_csv} ({LABELS_CHANGED}); retrain it on these labels"
        )
    if split.test_names_sha256 != names_sha256(comp.test.file_names):
        raise KitError(f"{run.path}: its test rows differ from {comp.test_csv} (test_names_sha256)")
    if len(run.oof) != len(comp.train):
        raise KitError(f"{run.path / 'oof.npy'}: {len(run.oof)} rows, {comp.train_csv} has {len(comp.train)}")
    if len(run.test) != len(comp.test):
        raise KitError(f"{run.path / 'test.npy'}: {len(run.test)} rows, {comp.test_csv} has {len(comp.test)}")


def open_competition(data_dir: str | Path) -> Competition:
    """The competition tables of ``data_dir``; images are not needed to blend or validate."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: competition folder not found")
    return Competition(root)


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """The finished runs, each given once."""
    if not run_dirs:
        raise KitError("no runs given")
    seen: dict[Path, Path] = {}
    for path in map(Path, run_dirs):
        if path.resolve() in seen:
            raise KitError(f"{path}: given twice")
        seen[path.resolve()] = path
    return [load_run(path) for path in seen.values()]


def run_labels(runs: Sequence[Run]) -> list[str]:
    """The runs' names, or their paths where two runs share a name."""
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run.path) for run in runs]


def load_fold_ids(comp: Competition) -> tuple[np.ndarray, int]:
    """The fold of each training row (N,) and the number of folds (at least 2, each non-empty)."""
    folds = load_folds(comp.folds_csv, comp.train.file_names)
    n_folds = int(folds.max()) + 1 if len(folds) else 0
    if folds.min(initial=0) < 0 or n_folds < 2 or len(np.unique(folds)) != n_folds:
        raise DataError(f"{comp.folds_csv}: folds must be numbered 0..k-1 with k >= 2, each non-empty")
    return folds, n_folds


def check_finite_grams(runs: Sequence[Run], grams: np.ndarray) -> None:
    """Refuse runs with NaN or infinite OOF predictions, seen on the diagonals of their Grams (F, P, R, R)."""
    diag = np.diagonal(grams, axis1=-2, axis2=-1)  # F, P, R
    for r, run in enumerate(runs):
        if not np.isfinite(diag[..., r]).all():
            raise KitError(f"{run.path / 'oof.npy'}: NaN or infinite predictions (were all folds trained?)")


def check_finite_test(runs: Sequence[Run], predictions: np.ndarray) -> None:
    """Refuse test predictions that are not finite, naming the first run with NaN or infinite ``test.npy``."""
    if not np.isfinite(predictions).all():
        bad = next((run for run in runs if not np.isfinite(run.test).all()), runs[0])
        raise KitError(f"{bad.path / 'test.npy'}: NaN or infinite predictions")


def provenance(comp: Competition, runs: Sequence[Run], labels: Sequence[str], n_folds: int, record_dir: Path) -> dict:
    """What a blend or stack is made from, with content hashes: the record's ``data``, ``split`` and ``inputs`` (the
    runs by identity, their paths relative to ``record_dir``, the record's folder)."""
    return {
        "data": DataRecord(
            dir=str(comp.root.resolve()),
            folds_csv_sha256=file_sha256(comp.folds_csv),
            landmarks_csv_sha256=file_sha256(comp.train_csv),
            test_points_csv_sha256=file_sha256(comp.test_csv),
            n_folds=n_folds,
        ),
        "split": runs[0].split,
        "inputs": tuple(
            Member(
                run=label,
                path=relative_path(run.path, record_dir),
                identity=run.metrics.identity,
                sha256={name: file_sha256(path) for name, path in run.artifact_files().items()},
            )
            for label, run in zip(labels, runs, strict=True)
        ),
    }


def run_entries(labels: Sequence[str], oof_mse, run_nme, weights) -> tuple[RunEntry, ...]:
    """The ``runs`` of a blend's or stack's record: each run's OOF MSE, NME, failure rate and weight."""
    return tuple(
        RunEntry(run=label, oof_mse=float(mse), oof_nme=nme, oof_failure_rate=failed, weight=round(float(w), 6))
        for label, mse, (nme, failed), w in zip(labels, oof_mse, run_nme, weights, strict=True)
    )


def refuse_existing(outputs: Sequence[Path]) -> None:
    """Refuse to overwrite an earlier result's files."""
    existing = [path for path in outputs if path.exists()]
    if existing:
        names = ", ".join(path.name for path in outputs)
        raise KitError(f"{existing[0]}: already exists; pass --force to replace {names} (or choose another --name)")


@dataclass(frozen=True)
class Inputs:
    """Checked inputs of a second-level model and where its outputs go."""

    name: str
    comp: Competition
    runs: list[Run]
    labels: list[str]
    folds: np.ndarray  # (N,) fold of each training row
    n_folds: int
    outputs: tuple[Path, Path, Path]  # NAME.csv, NAME.json, NAME.png
    nme_points: tuple[int, int] | None = None  # the face size's two points for NME; None: the face box
    sizes: np.ndarray | None = None  # (N,) the training faces' sizes for NME


def prepare_inputs(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    name: str,
    out_dir: str | Path,
    force: bool,
    nme_points: tuple[int, int] | None = None,
) -> Inputs:
    """Load and check the runs against each other and the data, and the outputs' place.

    Args:
        nme_points: the face size's two points for NME (default: the data's ``nme_points.txt``, else the face box).

    Raises:
        KitError: ``name`` is not a plain name, ``out_dir`` is inside the data or a run, the outputs exist (without
            ``force``), a run is missing or malformed, runs do not share one split or do not match the data, or a
            face has no size for NME.
    """
    name = check_name(name, "--name")
    comp = open_competition(data_dir)
    out_dir = Path(out_dir)
    refuse_inside(out_dir, comp.root, "--out-dir")
    runs = load_runs(run_dirs)
    for run in runs:
        refuse_inside(out_dir, run.path, "--out-dir", "the run folder")
    csv_path, json_path, png_path = (out_dir / f"{name}.{ext}" for ext in ("csv", "json", "png"))
    outputs = (csv_path, json_path, png_path)
    if not force:
        refuse_existing((csv_path, json_path, arrays_path(json_path), png_path))
    check_same_split(runs)
    for run in runs:
        check_matches_data(run, comp)
    folds, n_folds = load_fold_ids(comp)
    pair = comp.resolve_nme_points(nme_points)
    sizes = face_sizes(comp.train.points, pair, source=str(comp.train_csv), names=comp.train.file_names)
    return Inputs(name, comp, runs, run_labels(runs), folds, n_folds, outputs, pair, sizes)


def nme_record(nme_points: tuple[int, int] | None) -> dict:
    """The record's ``nme_points`` and its note on how NME is measured."""
    return {
        "nme_points": list(nme_points) if nme_points is not None else None,
        "nme_note": f"NME: per face, the mean point error over the face size ({normalisation(nme_points)}), averaged "
        f"over faces, in percent; failure rate: percent of faces whose NME is above {FAILURE_NME:g}%",
    }


def write_outputs(
    outputs: Sequence[Path],
    test_predictions: np.ndarray,
    comp: Competition,
    record: EnsembleRecord,
    plot: Callable[[Path], None],
) -> EnsembleRecord:
    """Write the submission, the record (with the submission's hash) and its NAME.npz, and the picture, atomically.

    All four files appear together, or none does (an existing set stays as it was).

    Args:
        outputs: NAME.csv, NAME.json, NAME.png.
        test_predictions: (M, P, 2) full test predictions in original pixels.
        record: the record, holding its fitted parameters; ``submission_sha256`` is filled in.
        plot: writes the PNG to the path it is given.

    Returns:
        The record as written.
    """
    csv_path, json_path, png_path = outputs
    with contextlib.ExitStack() as files:
        csv_tmp, png_tmp = files.enter_context(atomic_path(csv_path)), files.enter_context(atomic_path(png_path))
        write_submission(csv_tmp, test_predictions, comp.test)
        record = record.model_copy(update={"submission_sha256": file_sha256(csv_tmp)})
        plot(png_tmp)
        return write_record(json_path, record, files)
