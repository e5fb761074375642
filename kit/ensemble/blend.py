"""``blend_runs``: check that runs share one split, fit weights on their OOF predictions, score the blend by
nested CV, and write the submission with its record (``kit.ensemble.record``) and picture."""

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
    check_matches_data,
    check_same_split,
    nme_record,
    prepare_inputs,
    provenance,
    run_entries,
    write_outputs,
)
from kit.ensemble.nested import (
    face_nme,
    fold_point_grams,
    in_sample_blend,
    nested_blend,
    nested_cv,
    run_point_mse,
)
from kit.ensemble.params import blend_params
from kit.ensemble.record import BlendRecord, FoldModel, apply, arrays_path
from kit.ensemble.report import plot_point_errors
from kit.ensemble.rows import mean_row, one_blas_thread
from kit.ensemble.stack_nested import training_folds
from kit.ensemble.weights import Method
from kit.metrics import Scores, nme_summary

__all__ = ["BlendResult", "RunScore", "blend_runs", "check_matches_data", "check_same_split"]


@dataclass(frozen=True)
class BlendResult:
    name: str
    method: Method
    runs: list[RunScore]
    blend_mse: float  # nested CV: comparable with the runs' OOF MSE
    in_sample_mse: float  # weights scored on the rows they were fitted on (optimistic)
    fold_mse: list[float]
    csv: Path
    json: Path  # the record (kit.ensemble.record)
    npz: Path  # its fitted parameters
    png: Path
    blend_scores: Scores  # nested CV: MSE (= blend_mse), NME and failure rate
    in_sample_scores: Scores  # the all-folds weights on the rows they were fitted on
    nme_points: tuple[int, int] | None  # the face size's two points for NME; None: the face box

    @property
    def best_run(self) -> RunScore:
        return min(self.runs, key=lambda run: run.oof_mse)


def blend_runs(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    method: Method | str = Method.weights,
    name: str | None = None,
    out_dir: str | Path = Path("submissions"),
    force: bool = False,
    nme_points: tuple[int, int] | None = None,
) -> BlendResult:
    """Blend finished runs and write ``out_dir/NAME.csv``, ``NAME.json`` (with ``NAME.npz``) and ``NAME.png``.

    The weights are fitted on the runs' OOF predictions; the reported blend MSE comes from nested CV over the
    folds of ``folds.csv`` (weights fitted on the other folds, scored on the held-out one), so it is comparable
    with a single run's OOF MSE; so does its NME (``nme_points``: the face size's two points, default the data's
    ``nme_points.txt``, else the face box). The test predictions are blended with the weights fitted on all folds.

    Outputs never overwrite inputs or earlier results: ``out_dir`` must lie outside the competition folder and the
    run folders, and an existing NAME.csv, NAME.json, NAME.npz or NAME.png is refused unless ``force``, which
    replaces them together.

    Raises:
        KitError: a run is missing or malformed, runs do not share one split, they do not match the data, ``name``
            is not a plain name, ``out_dir`` is inside the data or a run, or the outputs exist (without ``force``).
    """
    method = Method(method)
    inputs = prepare_inputs(run_dirs, data_dir, name or f"blend-{method.value}", out_dir, force, nme_points)
    with one_blas_thread():
        return _blend(method, inputs)


def _blend(method: Method, inputs: Inputs) -> BlendResult:
    """``blend_runs`` on checked inputs."""
    comp, runs, labels, folds, n_folds = inputs.comp, inputs.runs, inputs.labels, inputs.folds, inputs.n_folds
    csv_path, json_path, png_path = inputs.outputs
    truth = comp.train.points

    grams = fold_point_grams([run.oof for run in runs], truth, folds, n_folds)
    check_finite_grams(runs, grams)
    fold_rows = np.bincount(folds, minlength=n_folds)
    score = nested_cv(method, grams, fold_rows)
    point_mse = run_point_mse(grams, fold_rows)  # R, P
    oof_mse = point_mse.mean(axis=1)
    weights = score.fit.weights
    global_weights = weights if weights.ndim == 1 else weights.mean(axis=0)

    # NME from the same held-out predictions as the nested-CV MSE, in one more pass over the rows
    per_run, per_face = face_nme(
        [run.oof for run in runs],
        truth,
        folds,
        inputs.sizes,
        {"nested": nested_blend(score), "in-sample": in_sample_blend(score)},
    )
    run_nme = [nme_summary(faces) for faces in per_run]
    nested = Scores(score.mse, *nme_summary(per_face["nested"]))
    in_sample = Scores(score.in_sample_mse, *nme_summary(per_face["in-sample"]))

    best = int(np.argmin(oof_mse))
    record = BlendRecord(
        name=inputs.name,
        method=method,
        submission=csv_path.name,
        **provenance(comp, runs, labels, n_folds, json_path.parent),
        runs=run_entries(labels, oof_mse, run_nme, global_weights),
        best_run=labels[best],
        blend_mse=score.mse,
        blend_fold_mse=tuple(float(v) for v in score.fold_mse),
        blend_nme=nested.nme,
        blend_failure_rate=nested.failure_rate,
        in_sample_mse=score.in_sample_mse,
        in_sample_nme=in_sample.nme,
        in_sample_failure_rate=in_sample.failure_rate,
        **nme_record(inputs.nme_points),
        weights={label: round(float(w), 6) for label, w in zip(labels, global_weights, strict=True)},
        fit=score.fit.info,
        fold_models=tuple(FoldModel(fold=k, fitted_on=training_folds(k, range(n_folds))) for k in range(n_folds)),
    ).with_params(blend_params(weights, score.fold_weights))
    blended = apply(record, [run.test for run in runs], "test rows: blend")  # the weights fitted on all folds
    check_finite_test(runs, blended)
    mean_face = mean_row(truth)
    write_outputs(
        inputs.outputs,
        blended,
        comp,
        record,
        lambda png: plot_point_errors(
            png,
            mean_face,
            (f"best run: {labels[best]}", point_mse[best]),
            (f"blend ({method.value}, nested CV)", score.point_mse),
        ),
    )
    return BlendResult(
        name=inputs.name,
        method=method,
        runs=[
            RunScore(label, run.path, float(mse), float(w), nme, failed)
            for label, run, mse, (nme, failed), w in zip(labels, runs, oof_mse, run_nme, global_weights, strict=True)
        ],
        blend_mse=score.mse,
        in_sample_mse=score.in_sample_mse,
        fold_mse=[float(v) for v in score.fold_mse],
        csv=csv_path,
        json=json_path,
        npz=arrays_path(json_path),
        png=png_path,
        blend_scores=nested,
        in_sample_scores=in_sample,
        nme_points=inputs.nme_points,
    )
