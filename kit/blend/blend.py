"""``blend_runs``: check that runs share one split, fit weights on their OOF predictions, score the blend by
nested CV, and write the submission with its provenance and picture."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.blend.nested import NestedScore, fold_point_grams, nested_cv, run_point_mse
from kit.blend.report import plot_point_errors
from kit.blend.weights import Method
from kit.data.competition import Competition
from kit.data.folds import load_folds
from kit.errors import DataError, KitError
from kit.io import atomic_path, file_sha256, refuse_inside, write_json
from kit.names import check_name
from kit.runs import Run, load_run, names_sha256
from kit.submit.format import write_submission


@dataclass(frozen=True)
class RunScore:
    name: str
    path: Path
    oof_mse: float  # recomputed against landmarks.csv
    weight: float  # the run's weight (averaged over points for per-point weights)


@dataclass(frozen=True)
class BlendResult:
    name: str
    method: Method
    runs: list[RunScore]
    blend_mse: float  # nested CV: comparable with the runs' OOF MSE
    in_sample_mse: float  # weights scored on the rows they were fitted on (optimistic)
    fold_mse: list[float]
    csv: Path
    json: Path
    png: Path

    @property
    def best_run(self) -> RunScore:
        return min(self.runs, key=lambda run: run.oof_mse)


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


def _load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    if not run_dirs:
        raise KitError("no runs given")
    seen: dict[Path, Path] = {}
    for path in map(Path, run_dirs):
        if path.resolve() in seen:
            raise KitError(f"{path}: given twice")
        seen[path.resolve()] = path
    return [load_run(path) for path in seen.values()]


def _labels(runs: Sequence[Run]) -> list[str]:
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run.path) for run in runs]


def _load_folds(comp: Competition) -> tuple[np.ndarray, int]:
    folds = load_folds(comp.folds_csv, comp.train.file_names)
    n_folds = int(folds.max()) + 1 if len(folds) else 0
    if folds.min(initial=0) < 0 or n_folds < 2 or len(np.unique(folds)) != n_folds:
        raise DataError(f"{comp.folds_csv}: folds must be numbered 0..k-1 with k >= 2, each non-empty")
    return folds, n_folds


def _blend_test(runs: Sequence[Run], weights: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Weighted sum of the runs' test predictions (M, P, 2), weights (R,) or (P, R)."""
    n_points = runs[0].test.shape[1]
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64).T.reshape(len(runs), -1), (len(runs), n_points))
    out = np.empty(runs[0].test.shape, dtype=np.float32)
    for start in range(0, len(out), chunk):
        rows = slice(start, start + chunk)
        out[rows] = sum(w[r][None, :, None] * np.asarray(run.test[rows], np.float64) for r, run in enumerate(runs))
    return out


def _check_finite(runs: Sequence[Run], grams: np.ndarray) -> None:
    diag = np.diagonal(grams, axis1=-2, axis2=-1)  # F, P, R
    for r, run in enumerate(runs):
        if not np.isfinite(diag[..., r]).all():
            raise KitError(f"{run.path / 'oof.npy'}: NaN or infinite predictions (were all folds trained?)")


def _provenance(comp: Competition, runs: Sequence[Run], labels: Sequence[str], n_folds: int) -> dict:
    """What the blend was made from, with content hashes."""
    return {
        "data": {
            "dir": str(comp.root),
            "folds_csv_sha256": file_sha256(comp.folds_csv),
            "landmarks_csv_sha256": file_sha256(comp.train_csv),
            "test_points_csv_sha256": file_sha256(comp.test_csv),
            "n_folds": n_folds,
        },
        "split": runs[0].split.to_dict(),
        "inputs": [
            {"run": label, "path": str(run.path)}
            | {f"{name}_sha256": file_sha256(path) for name, path in run.artifact_files().items()}
            for label, run in zip(labels, runs, strict=True)
        ],
    }


def _refuse_existing(outputs: Sequence[Path]) -> None:
    """Refuse to overwrite an earlier blend's files."""
    existing = [path for path in outputs if path.exists()]
    if existing:
        names = ", ".join(path.name for path in outputs)
        raise KitError(f"{existing[0]}: already exists; pass --force to replace {names} (or choose another --name)")


def _weights_record(score: NestedScore, labels: Sequence[str]) -> dict:
    weights = score.fit.weights
    global_weights = weights if weights.ndim == 1 else weights.mean(axis=0)
    record = {"weights": {label: round(float(w), 6) for label, w in zip(labels, global_weights, strict=True)}}
    if weights.ndim == 2:
        record["per_point_weights"] = np.round(weights, 6).tolist()
    return record


def blend_runs(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    method: Method | str = Method.weights,
    name: str | None = None,
    out_dir: str | Path = Path("submissions"),
    force: bool = False,
) -> BlendResult:
    """Blend finished runs and write ``out_dir/NAME.csv``, ``NAME.json`` and ``NAME.png``.

    The weights are fitted on the runs' OOF predictions; the reported blend MSE comes from nested CV over the
    folds of ``folds.csv`` (weights fitted on the other folds, scored on the held-out one), so it is comparable
    with a single run's OOF MSE. The test predictions are blended with the weights fitted on all folds.

    Outputs never overwrite inputs or earlier results: ``out_dir`` must lie outside the competition folder and the
    run folders, and an existing NAME.csv, NAME.json or NAME.png is refused unless ``force``, which replaces all
    three together.

    Raises:
        KitError: a run is missing or malformed, runs do not share one split, they do not match the data, ``name``
            is not a plain name, ``out_dir`` is inside the data or a run, or the outputs exist (without ``force``).
    """
    method = Method(method)
    name = check_name(name or f"blend-{method.value}", "--name")
    comp = open_competition(data_dir)
    out_dir = Path(out_dir)
    refuse_inside(out_dir, comp.root, "--out-dir")
    runs = _load_runs(run_dirs)
    for run in runs:
        refuse_inside(out_dir, run.path, "--out-dir", "the run folder")
    csv_path, json_path, png_path = outputs = [out_dir / f"{name}.{ext}" for ext in ("csv", "json", "png")]
    if not force:
        _refuse_existing(outputs)
    check_same_split(runs)
    for run in runs:
        check_matches_data(run, comp)
    labels = _labels(runs)
    folds, n_folds = _load_folds(comp)
    truth = comp.train.points

    grams = fold_point_grams([run.oof for run in runs], truth, folds, n_folds)
    _check_finite(runs, grams)
    fold_rows = np.bincount(folds, minlength=n_folds)
    score = nested_cv(method, grams, fold_rows)
    point_mse = run_point_mse(grams, fold_rows)  # R, P
    oof_mse = point_mse.mean(axis=1)
    weights = score.fit.weights
    global_weights = weights if weights.ndim == 1 else weights.mean(axis=0)

    blended = _blend_test(runs, weights)
    if not np.isfinite(blended).all():
        bad = next(run for run in runs if not np.isfinite(run.test).all())
        raise KitError(f"{bad.path / 'test.npy'}: NaN or infinite predictions")

    best = int(np.argmin(oof_mse))
    record = {
        "name": name,
        "method": method.value,
        "submission": csv_path.name,
        **_provenance(comp, runs, labels, n_folds),
        "runs": [
            {"run": label, "oof_mse": float(mse), "weight": round(float(w), 6)}
            for label, mse, w in zip(labels, oof_mse, global_weights, strict=True)
        ],
        "best_run": labels[best],
        "blend_mse": score.mse,
        "blend_mse_note": "nested CV: weights fitted on the other folds, scored on the held-out fold",
        "blend_fold_mse": [float(v) for v in score.fold_mse],
        "in_sample_mse": score.in_sample_mse,
        **_weights_record(score, labels),
        "fit": score.fit.info,
    }
    mean_face = np.asarray(truth).mean(axis=0, dtype=np.float64)
    with contextlib.ExitStack() as stack:  # all three files appear together, or none does
        csv_tmp, json_tmp, png_tmp = (stack.enter_context(atomic_path(p)) for p in outputs)
        write_submission(csv_tmp, blended, comp.test)
        record["submission_sha256"] = file_sha256(csv_tmp)
        write_json(json_tmp, record)
        plot_point_errors(
            png_tmp,
            mean_face,
            (f"best run: {labels[best]}", point_mse[best]),
            (f"blend ({method.value}, nested CV)", score.point_mse),
        )
    return BlendResult(
        name=name,
        method=method,
        runs=[
            RunScore(label, run.path, float(mse), float(w))
            for label, run, mse, w in zip(labels, runs, oof_mse, global_weights, strict=True)
        ],
        blend_mse=score.mse,
        in_sample_mse=score.in_sample_mse,
        fold_mse=[float(v) for v in score.fold_mse],
        csv=csv_path,
        json=json_path,
        png=png_path,
    )
