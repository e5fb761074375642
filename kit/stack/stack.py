"""``stack_runs``: a second-level model over finished runs' OOF predictions, scored by nested CV against the best
blend on the same folds, written like a blend (submission, provenance record, per-point error picture)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from kit.blend.inputs import (
    Inputs,
    RunScore,
    check_finite_grams,
    check_finite_test,
    nme_record,
    prepare_inputs,
    provenance,
    run_entries,
    write_outputs,
)
from kit.blend.nested import (
    PREDICT_ROWS,
    NestedScore,
    by_fold,
    everywhere,
    face_nme,
    nested_blend,
    nested_cv,
    run_point_mse,
)
from kit.blend.report import plot_point_errors
from kit.blend.rows import mean_row, one_blas_thread, run_blocks
from kit.blend.weights import Method
from kit.metrics import Scores, nme_summary
from kit.runs import Run
from kit.stack.nested import StackScore, nested_pca_ridge, nested_ridge
from kit.stack.ridge import RIDGE_GRID, PointRidge, grid_label
from kit.stack.shape import CORRECTION_GRID, PcaRidge, component_grid
from kit.stack.stats import accumulate, rows_per_chunk


class Model(str, Enum):
    """The second-level model."""

    ridge = "ridge"  # per point and coordinate: intercept + ridge weights per run, shrunk toward the runs' mean
    pca_ridge = "pca-ridge"  # ridge, then a ridge correction of shared errors in a PCA basis of whole faces


@dataclass(frozen=True)
class StackResult:
    name: str
    model: Model
    runs: list[RunScore]  # weight: the run's stage-1 weight, averaged over points and coordinates
    stack_mse: float  # nested CV: comparable with the runs' OOF MSE and the blend's nested-CV MSE
    in_sample_mse: float  # the stacker scored on the rows it was fitted on (optimistic)
    fold_mse: list[float]
    blend_mse: float  # the best blend (lowest nested-CV MSE of every blend method) of the same runs
    blend_method: str
    blend_fold_mse: list[float]
    csv: Path
    json: Path
    png: Path
    stack_scores: Scores  # nested CV: MSE (= stack_mse), NME and failure rate
    in_sample_scores: Scores  # the stacker on the rows it was fitted on
    blend_scores: Scores  # the best blend's nested CV
    nme_points: tuple[int, int] | None  # the face size's two points for NME; None: the face box

    @property
    def best_run(self) -> RunScore:
        return min(self.runs, key=lambda run: run.oof_mse)

    @property
    def gain(self) -> float:
        """How much lower the stack's nested-CV MSE is than the best blend's (negative: the blend is better)."""
        return self.blend_mse - self.stack_mse


def predict_test(model: PointRidge | PcaRidge, runs: Sequence[Run]) -> np.ndarray:
    """The stacker applied to the runs' test predictions, in row chunks: (M, P, 2) float32."""
    tests = [run.test for run in runs]
    m, p, _ = tests[0].shape
    out = np.empty((m, p, 2), dtype=np.float32)
    for rows, x in run_blocks(tests, rows_per_chunk(8 * 2 * p * len(runs)), PREDICT_ROWS, "test rows: stack"):
        out[rows] = model.predict_runs(x).reshape(-1, p, 2)
    return out


def _stage1(model: PointRidge | PcaRidge) -> PointRidge:
    return model.stage1 if isinstance(model, PcaRidge) else model


def _stacker_record(score: StackScore, labels: Sequence[str], n_points: int) -> dict:
    stage1 = _stage1(score.model)
    record = {
        "ridge": {
            "strength": stage1.info["strength"],
            "strength_grid": [grid_label(s) for s in RIDGE_GRID],
            "strength_note": "times each coordinate's mean feature variance; inf: the runs' mean plus a bias",
            "cv_sse": stage1.info["cv_sse"],
            "weights": {
                label: round(float(w), 6) for label, w in zip(labels, stage1.weights.mean(axis=0), strict=True)
            },
            "per_point_weights": np.round(stage1.weights.reshape(n_points, 2, -1), 6).tolist(),
            "intercepts": np.round(stage1.intercept.reshape(n_points, 2), 6).tolist(),
        }
    }
    if isinstance(score.model, PcaRidge):
        correction = score.model.correction
        record["shape"] = {
            "components": correction.k,
            "components_grid": list(component_grid(correction.basis.components.shape[0])),
            "strength": grid_label(correction.strength),
            "strength_grid": [grid_label(s) for s in CORRECTION_GRID],
            "explained_variance": np.round(correction.basis.variance[: correction.k], 6).tolist(),
            "cv_sse": correction.info["cv_sse"],
        }
    folds = []
    for k, model in enumerate(score.fold_models):
        entry = {"fold": k, "fitted_on": list(model.fitted_on), "ridge_strength": _stage1(model).info["strength"]}
        if isinstance(model, PcaRidge):
            entry |= {"components": model.correction.k, "shape_strength": grid_label(model.correction.strength)}
        folds.append(entry)
    record["fold_models"] = folds
    return record


def _face_nme(
    runs: Sequence[Run], truth, folds: np.ndarray, sizes: np.ndarray, score: StackScore, blend: NestedScore
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-face NME of each run (R, N), of the stack's nested-CV predictions (each fold by the stacker fitted
    without it), its in-sample ones, and of the best blend's nested-CV predictions, in one pass over the rows."""
    ensembles = {
        "stack": by_fold([fold_model.predict_runs for fold_model in score.fold_models]),
        "in-sample": everywhere(score.model.predict_runs),
        "blend": nested_blend(blend),
    }
    return face_nme([run.oof for run in runs], truth, folds, sizes, ensembles)


def stack_runs(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    model: Model | str = Model.ridge,
    name: str | None = None,
    out_dir: str | Path = Path("submissions"),
    force: bool = False,
    nme_points: tuple[int, int] | None = None,
) -> StackResult:
    """Stack finished runs and write ``out_dir/NAME.csv``, ``NAME.json`` and ``NAME.png``.

    The stacker is fitted on the runs' OOF predictions. The reported stack MSE comes from nested CV over the folds
    of ``folds.csv``: for each held-out fold the stacker, its inner-CV choices and (``pca-ridge``) its PCA basis are
    fitted on the other folds only. It is compared with the best nested-CV MSE of every blend method over the same
    runs. The NME of each (``nme_points``: the face size's two points, default the data's ``nme_points.txt``, else
    the face box) comes from the same held-out predictions. The test predictions come from the stacker fitted on
    all folds.

    The runs, data and outputs are checked as by ``kit blend``: runs share one split that matches the data, and an
    existing NAME.csv, NAME.json or NAME.png is refused unless ``force``, which replaces all three together.

    Raises:
        KitError: as ``blend_runs``.
    """
    model = Model(model)
    inputs = prepare_inputs(run_dirs, data_dir, name or f"stack-{model.value}", out_dir, force, nme_points)
    with one_blas_thread():
        return _stack(model, inputs)


def _stack(model: Model, inputs: Inputs) -> StackResult:
    """``stack_runs`` on checked inputs."""
    comp, runs, labels, folds, n_folds = inputs.comp, inputs.runs, inputs.labels, inputs.folds, inputs.n_folds
    truth = comp.train.points
    oof = [run.oof for run in runs]

    stats = accumulate(oof, truth, folds, n_folds, shape=model is Model.pca_ridge)
    check_finite_grams(runs, stats.grams)
    # The best blend: every blend method scored by the same nested CV, the lowest kept.
    blends = {method: nested_cv(method, stats.grams, stats.rows) for method in Method}
    blend_method, blend = min(blends.items(), key=lambda item: item[1].mse)
    point_mse = run_point_mse(stats.grams, stats.rows)  # R, P
    oof_mse = point_mse.mean(axis=1)
    score = nested_ridge(stats) if model is Model.ridge else nested_pca_ridge(stats, oof, truth, folds)
    stacked = predict_test(score.model, runs)
    check_finite_test(runs, stacked)
    per_run, per_face = _face_nme(runs, truth, folds, inputs.sizes, score, blend)
    run_nme = [nme_summary(faces) for faces in per_run]
    nested = Scores(score.mse, *nme_summary(per_face["stack"]))
    in_sample = Scores(score.in_sample_mse, *nme_summary(per_face["in-sample"]))
    blend_scores = Scores(blend.mse, *nme_summary(per_face["blend"]))

    weights = _stage1(score.model).weights.mean(axis=0)
    gain = blend.mse - score.mse
    csv_path, json_path, png_path = inputs.outputs
    record = {
        "name": inputs.name,
        "kind": "stack",
        "model": model.value,
        "submission": csv_path.name,
        **provenance(comp, runs, labels, n_folds),
        "runs": run_entries(labels, oof_mse, run_nme, weights),
        "weight_note": "each run's ridge weight (stage 1 of pca-ridge), averaged over points and coordinates",
        "best_run": labels[int(np.argmin(oof_mse))],
        "stack_mse": score.mse,
        "stack_mse_note": "nested CV: the stacker, its inner-CV choices and PCA basis fitted on the other folds, "
        "scored on the held-out fold",
        "stack_fold_mse": [float(v) for v in score.fold_mse],
        "stack_nme": nested.nme,
        "stack_failure_rate": nested.failure_rate,
        "in_sample_mse": score.in_sample_mse,
        "in_sample_nme": in_sample.nme,
        "in_sample_failure_rate": in_sample.failure_rate,
        "in_sample_note": "optimistic: the stacker fitted on all folds, scored on the same rows",
        **nme_record(inputs.nme_points),
        "best_blend": {
            "method": blend_method.value,
            "mse": blend.mse,
            "nme": blend_scores.nme,
            "failure_rate": blend_scores.failure_rate,
            "fold_mse": [float(v) for v in blend.fold_mse],
            "method_mse": {method.value: result.mse for method, result in blends.items()},
        },
        "beats_best_blend": bool(gain > 0),
        "gain_over_best_blend": float(gain),
        "stacker": _stacker_record(score, labels, comp.n_points),
    }
    mean_face = mean_row(truth)
    write_outputs(
        inputs.outputs,
        stacked,
        comp,
        record,
        lambda png: plot_point_errors(
            png,
            mean_face,
            (f"best blend ({blend_method.value}, nested CV)", blend.point_mse),
            (f"stack ({model.value}, nested CV)", score.point_mse),
            reference="best blend",
            reference_score="nested-CV MSE",
            candidate="stack",
        ),
    )
    return StackResult(
        name=inputs.name,
        model=model,
        runs=[
            RunScore(label, run.path, float(mse), float(w), nme, failed)
            for label, run, mse, (nme, failed), w in zip(labels, runs, oof_mse, run_nme, weights, strict=True)
        ],
        stack_mse=score.mse,
        in_sample_mse=score.in_sample_mse,
        fold_mse=[float(v) for v in score.fold_mse],
        blend_mse=blend.mse,
        blend_method=blend_method.value,
        blend_fold_mse=[float(v) for v in blend.fold_mse],
        csv=csv_path,
        json=json_path,
        png=png_path,
        stack_scores=nested,
        in_sample_scores=in_sample,
        blend_scores=blend_scores,
        nme_points=inputs.nme_points,
    )
