"""``blend_runs``: check that runs share one split, fit weights on their OOF predictions, score the blend by
nested CV, and write the submission with its provenance and picture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.blend.inputs import (
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
from kit.blend.nested import (
    PREDICT_ROWS,
    NestedScore,
    blend_coordinates,
    face_nme,
    fold_point_grams,
    in_sample_blend,
    nested_blend,
    nested_cv,
    run_point_mse,
)
from kit.blend.report import plot_point_errors
from kit.blend.rows import mean_row, one_blas_thread, run_blocks
from kit.blend.weights import Method
from kit.metrics import Scores, nme_summary
from kit.runs import Run

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
    json: Path
    png: Path
    blend_scores: Scores  # nested CV: MSE (= blend_mse), NME and failure rate
    in_sample_scores: Scores  # the all-folds weights on the rows they were fitted on
    nme_points: tuple[int, int] | None  # the face size's two points for NME; None: the face box

    @property
    def best_run(self) -> RunScore:
        return min(self.runs, key=lambda run: run.oof_mse)


def _blend_test(runs: Sequence[Run], weights: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Weighted sum of the runs' test predictions (M, P, 2), weights (R,) or (P, R)."""
    tests = [run.test for run in runs]
    out = np.empty(tests[0].shape, dtype=np.float32)
    for rows, x in run_blocks(tests, chunk, PREDICT_ROWS, "test rows: blend"):
        out[rows] = blend_coordinates(x, weights).reshape(-1, *out.shape[1:])
    return out


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
    nme_points: tuple[int, int] | None = None,
) -> BlendResult:
    """Blend finished runs and write ``out_dir/NAME.csv``, ``NAME.json`` and ``NAME.png``.

    The weights are fitted on the runs' OOF predictions; the reported blend MSE comes from nested CV over the
    folds of ``folds.csv`` (weights fitted on the other folds, scored on the held-out one), so it is comparable
    with a single run's OOF MSE; so does its NME (``nme_points``: the face size's two points, default the data's
    ``nme_points.txt``, else the face box). The test predictions are blended with the weights fitted on all folds.

    Outputs never overwrite inputs or earlier results: ``out_dir`` must lie outside the competition folder and the
    run folders, and an existing NAME.csv, NAME.json or NAME.png is refused unless ``force``, which replaces all
    three together.

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
    name = inputs.name
    truth = comp.train.points

    grams = fold_point_grams([run.oof for run in runs], truth, folds, n_folds)
    check_finite_grams(runs, grams)
    fold_rows = np.bincount(folds, minlength=n_folds)
    score = nested_cv(method, grams, fold_rows)
    point_mse = run_point_mse(grams, fold_rows)  # R, P
    oof_mse = point_mse.mean(axis=1)
    weights = score.fit.weights
    global_weights = weights if weights.ndim == 1 else weights.mean(axis=0)

    blended = _blend_test(runs, weights)
    check_finite_test(runs, blended)
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
    record = {
        "name": name,
        "method": method.value,
        "submission": csv_path.name,
        **provenance(comp, runs, labels, n_folds),
        "runs": run_entries(labels, oof_mse, run_nme, global_weights),
        "best_run": labels[best],
        "blend_mse": score.mse,
        "blend_mse_note": "nested CV: weights fitted on the other folds, scored on the held-out fold",
        "blend_fold_mse": [float(v) for v in score.fold_mse],
        "blend_nme": nested.nme,
        "blend_failure_rate": nested.failure_rate,
        "in_sample_mse": score.in_sample_mse,
        "in_sample_nme": in_sample.nme,
        "in_sample_failure_rate": in_sample.failure_rate,
        **nme_record(inputs.nme_points),
        **_weights_record(score, labels),
        "fit": score.fit.info,
    }
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
        name=name,
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
        png=png_path,
        blend_scores=nested,
        in_sample_scores=in_sample,
        nme_points=inputs.nme_points,
    )
