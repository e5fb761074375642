"""Blend and stack records written straight through ``kit.ensemble.record`` (no fitting), for tests that only read
them: the ledger, ``kit runs``. Importable from any test folder (as ``fake_runs``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kit.ensemble.params import blend_params, model_keys
from kit.ensemble.record import (
    BestBlend,
    BlendRecord,
    DataRecord,
    FoldModel,
    Member,
    RidgeInfo,
    RunEntry,
    Stacker,
    StackFoldModel,
    StackRecord,
    relative_path,
    write_record,
)
from kit.runs import SplitInfo

K = 3


def fake_record(
    path: Path,
    runs: dict[str, Path],
    kind: str = "blend",
    cv: tuple[float, float, float] = (1.0, 1.0, 0.0),
    n_points: int = 4,
    submission_sha256: str | None = None,
) -> Path:
    """Write the record ``path`` (NAME.json, with NAME.npz) of a blend or ridge stack of ``runs`` (label -> run
    folder, which need not exist) with equal weights and nested-CV scores ``cv``; returns ``path``."""
    labels = list(runs)
    split = SplitInfo(folds_sha256="f" * 64, train_names_sha256="a" * 64, test_names_sha256="b" * 64, n_points=n_points)
    common = {
        "name": path.stem,
        "submission": f"{path.stem}.csv",
        "submission_sha256": submission_sha256,
        "data": DataRecord(
            dir="/data",
            folds_csv_sha256="f" * 64,
            landmarks_csv_sha256="l" * 64,
            test_points_csv_sha256="t" * 64,
            n_folds=K,
        ),
        "split": split,
        "inputs": tuple(
            Member(run=label, path=relative_path(run, path.parent), identity=None, sha256={})
            for label, run in runs.items()
        ),
        "runs": tuple(
            RunEntry(run=label, oof_mse=cv[0] + 1 + i, oof_nme=cv[1], oof_failure_rate=0.0, weight=1 / len(runs))
            for i, label in enumerate(labels)
        ),
        "best_run": labels[0],
        "in_sample_mse": cv[0],
        "in_sample_nme": cv[1],
        "in_sample_failure_rate": cv[2],
        "nme_points": None,
        "nme_note": "NME",
    }
    weights = np.full(len(runs), 1 / len(runs))
    folds = [tuple(f for f in range(K) if f != k) for k in range(K)]
    if kind == "blend":
        record = BlendRecord(
            **common,
            method="weights",
            blend_mse=cv[0],
            blend_fold_mse=(cv[0],) * K,
            blend_nme=cv[1],
            blend_failure_rate=cv[2],
            weights=dict(zip(labels, weights.tolist(), strict=True)),
            fit={},
            fold_models=tuple(FoldModel(fold=k, fitted_on=folds[k]) for k in range(K)),
        ).with_params(blend_params(weights, [weights] * K))
    else:
        q = 2 * n_points
        params = {}
        for key in model_keys(K):
            params[f"{key}.weights"], params[f"{key}.intercept"] = np.tile(weights, (q, 1)), np.zeros(q)
        record = StackRecord(
            **common,
            method="ridge",
            stack_mse=cv[0],
            stack_fold_mse=(cv[0],) * K,
            stack_nme=cv[1],
            stack_failure_rate=cv[2],
            best_blend=BestBlend(
                method="weights", mse=cv[0] + 1, nme=cv[1], failure_rate=0.0, fold_mse=(cv[0] + 1,) * K, method_mse={}
            ),
            beats_best_blend=True,
            gain_over_best_blend=1.0,
            stacker=Stacker(
                ridge=RidgeInfo(
                    strength="0.001", strength_grid=("0.001",), cv_sse=None, weights=dict.fromkeys(labels, 0.5)
                )
            ),
            fold_models=tuple(StackFoldModel(fold=k, fitted_on=folds[k], ridge_strength="0.001") for k in range(K)),
        ).with_params(params)
    write_record(path, record)
    return path
