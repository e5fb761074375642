"""``stack_runs``: a second-level model over finished runs' OOF predictions, scored by nested CV against the best
blend on the same folds, written like a blend (submission, record with the fitted stacker, per-point error picture)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.ensemble.inputs import (
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
from kit.ensemble.nested import NestedScore, by_fold, everywhere, face_nme, nested_blend, nested_cv, run_point_mse
from kit.ensemble.params import stacker_params
from kit.ensemble.record import (
    BestBlend,
    RidgeInfo,
    ShapeInfo,
    Stacker,
    StackFoldModel,
    StackRecord,
    apply,
    arrays_path,
)
from kit.ensemble.report import plot_point_errors
from kit.ensemble.ridge import RIDGE_GRID, PointRidge, grid_label
from kit.ensemble.rows import mean_row, one_blas_thread
from kit.ensemble.shape import CORRECTION_GRID, PcaRidge, component_grid
from kit.ensemble.stack_nested import Model, StackScore, nested_pca_ridge, nested_ridge
from kit.ensemble.stats import accumulate
from kit.ensemble.weights import Method
from kit.metrics import Scores, nme_summary
from kit.runs import Run

__all__ = ["Model", "StackResult", "stack_runs"]


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
    json: Path  # the record (kit.ensemble.record)
    npz: Path  # its fitted parameters
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


def _stage1(model: PointRidge | PcaRidge) -> PointRidge:
    return model.stage1 if isinstance(model, PcaRidge) else model


def _stacker(score: StackScore, labels: Sequence[str]) -> Stacker:
    """The choices of the stacker fitted on all folds (its arrays go in the record's NAME.npz)."""
    stage1 = _stage1(score.model)
    ridge = RidgeInfo(
        strength=stage1.info["strength"],
        strength_grid=tuple(grid_label(s) for s in RIDGE_GRID),
        cv_sse=stage1.info["cv_sse"],
        weights={label: round(float(w), 6) for label, w in zip(labels, stage1.weights.mean(axis=0), strict=True)},
    )
    if not isinstance(score.model, PcaRidge):
        return Stacker(ridge=ridge)
    correction = score.model.correction
    shape = ShapeInfo(
        components=correction.k,
        components_grid=component_grid(correction.basis.components.shape[0]),
        strength=grid_label(correction.strength),
        strength_grid=tuple(grid_label(s) for s in CORRECTION_GRID),
        explained_variance=tuple(np.round(correction.basis.variance[: correction.k], 6).tolist()),
        cv_sse=correction.info["cv_sse"],
    )
    return Stacker(ridge=ridge, shape=shape)


def _fold_models(score: StackScore) -> tuple[StackFoldModel, ...]:
    """What each fold's stacker (fitted without that fold) chose."""
    folds = []
    for k, model in enumerate(score.fold_models):
        shape = {}
        if isinstance(model, PcaRidge):
            shape = {"components": model.correction.k, "shape_strength": grid_label(model.correction.strength)}
        folds.append(
            StackFoldModel(fold=k, fitted_on=model.fitted_on, ridge_strength=_stage1(model).info["strength"], **shape)
        )
    return tuple(folds)


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
    """Stack finished runs and write ``out_dir/NAME.csv``, ``NAME.json`` (with ``NAME.npz``) and ``NAME.png``.

    The stacker is fitted on the runs' OOF predictions. The reported stack MSE comes from nested CV over the folds
    of ``folds.csv``: for each held-out fold the stacker, its inner-CV choices and (``pca-ridge``) its PCA basis are
    fitted on the other folds only. It is compared with the best nested-CV MSE of every blend method over the same
    runs. The NME of each (``nme_points``: the face size's two points, default the data's ``nme_points.txt``, else
    the face box) comes from the same held-out predictions. The test predictions come from the stacker fitted on
    all folds.

    The runs, data and outputs are checked as by ``kit blend``: runs share one split that matches the data, and an
    existing NAME.csv, NAME.json, NAME.npz or NAME.png is refused unless ``force``, which replaces them together.

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
    per_run, per_face = _face_nme(runs, truth, folds, inputs.sizes, score, blend)
    run_nme = [nme_summary(faces) for faces in per_run]
    nested = Scores(score.mse, *nme_summary(per_face["stack"]))
    in_sample = Scores(score.in_sample_mse, *nme_summary(per_face["in-sample"]))
    blend_scores = Scores(blend.mse, *nme_summary(per_face["blend"]))

    weights = _stage1(score.model).weights.mean(axis=0)
    gain = blend.mse - score.mse
    csv_path, json_path, png_path = inputs.outputs
    record = StackRecord(
        name=inputs.name,
        method=model,
        submission=csv_path.name,
        **provenance(comp, runs, labels, n_folds, json_path.parent),
        runs=run_entries(labels, oof_mse, run_nme, weights),
        best_run=labels[int(np.argmin(oof_mse))],
        stack_mse=score.mse,
        stack_fold_mse=tuple(float(v) for v in score.fold_mse),
        stack_nme=nested.nme,
        stack_failure_rate=nested.failure_rate,
        in_sample_mse=score.in_sample_mse,
        in_sample_nme=in_sample.nme,
        in_sample_failure_rate=in_sample.failure_rate,
        **nme_record(inputs.nme_points),
        best_blend=BestBlend(
            method=blend_method,
            mse=blend.mse,
            nme=blend_scores.nme,
            failure_rate=blend_scores.failure_rate,
            fold_mse=tuple(float(v) for v in blend.fold_mse),
            method_mse={method.value: result.mse for method, result in blends.items()},
        ),
        beats_best_blend=bool(gain > 0),
        gain_over_best_blend=float(gain),
        stacker=_stacker(score, labels),
        fold_models=_fold_models(score),
    ).with_params(stacker_params(score.model, score.fold_models))
    stacked = apply(record, [run.test for run in runs], "test rows: stack")  # the stacker fitted on all folds
    check_finite_test(runs, stacked)
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
        npz=arrays_path(json_path),
        png=png_path,
        stack_scores=nested,
        in_sample_scores=in_sample,
        blend_scores=blend_scores,
        nme_points=inputs.nme_points,
    )
