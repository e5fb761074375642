"""Blend weights, nested CV and ``kit blend`` on tiny synthetic competitions (no images needed)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from typer.testing import CliRunner

from kit.cli import app
from kit.data.folds import make_folds, write_folds
from kit.data.landmarks import point_columns, read_test_points
from kit.ensemble import nested
from kit.ensemble.blend import blend_runs
from kit.ensemble.nested import fold_point_grams, nested_cv
from kit.ensemble.record import read_record
from kit.ensemble.rows import report_passes
from kit.ensemble.weights import (
    Method,
    blend_sse,
    fit,
    fit_hill_climb,
    fit_per_point,
    fit_per_point_cv,
    fit_weights,
    project_simplex,
    simplex_qp,
)
from kit.errors import KitError
from kit.io import file_sha256, refuse_inside
from kit.runs import load_run, names_sha256
from kit.submit.format import select_requested, validate_submission

runner = CliRunner()


# ---------------------------------------------------------------- synthetic competitions and runs


def write_competition(root: Path, n_train: int = 90, n_test: int = 12, n_points: int = 10, k: int = 3, seed: int = 0):
    """Tables only: train/landmarks.csv, test/test_points.csv (4 requested points), folds.csv."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(20, 100, size=(n_train, n_points, 2)).round().astype(np.float32)
    test_truth = rng.uniform(20, 100, size=(n_test, n_points, 2)).astype(np.float32)
    names = np.array([f"img_{i:04d}.jpg" for i in range(n_train)])
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    lines = ["\t".join(["file_name", *point_columns(n_points)])]
    lines += ["\t".join([name, *(f"{v:g}" for v in row.ravel())]) for name, row in zip(names, truth, strict=True)]
    (root / "train" / "landmarks.csv").write_text("\n".join(lines) + "\n")
    requested = [rng.choice(n_points, size=4, replace=False) for _ in range(n_test)]
    rows = ["file_name\tpoint_index_list"] + [
        f"test_{i:03d}.jpg\t[{', '.join(map(str, idx))}]" for i, idx in enumerate(requested)
    ]
    (root / "test" / "test_points.csv").write_text("\n".join(rows) + "\n")
    write_folds(root / "folds.csv", make_folds(names, k=k, seed=seed))
    return truth, test_truth


def _first_column(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), np.array([line.split("\t")[0] for line in lines[1:]])


def split_block(root: Path) -> dict:
    """The ``split`` block a run trained on ``root`` would carry."""
    header, train_names = _first_column(root / "train/landmarks.csv")
    _, test_names = _first_column(root / "test/test_points.csv")
    n_points = (len(header) - 1) // 2
    return {
        "folds_sha256": file_sha256(root / "folds.csv"),
        "train_names_sha256": names_sha256(train_names),
        "test_names_sha256": names_sha256(test_names),
        "n_points": n_points,
    }


def write_run(path: Path, oof: np.ndarray, test: np.ndarray, split: dict, truth: np.ndarray | None = None) -> Path:
    path.mkdir(parents=True)
    np.save(path / "oof.npy", oof.astype(np.float32))
    np.save(path / "test.npy", test.astype(np.float32))
    oof_mse = float(np.mean((oof - truth) ** 2)) if truth is not None else 0.0
    metrics = {
        "name": path.name,
        "family": "regression",
        "backbone": "test",
        "oof_mse": oof_mse,
        "folds": [],
        "wall_seconds": 0.0,
        "images_per_second": 0.0,
        "tta": {},
        "split": split,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def noisy_runs(root: Path, truth, test_truth, sigmas, seed: int = 1) -> list[Path]:
    rng = np.random.default_rng(seed)
    split = split_block(root)
    runs = []
    for i, sigma in enumerate(sigmas):
        oof = truth + rng.normal(0, sigma, truth.shape)
        test = test_truth + rng.normal(0, sigma, test_truth.shape)
        runs.append(write_run(root.parent / "runs" / f"run{i}", oof, test, split, truth))
    return runs


@pytest.fixture
def comp(tmp_path):
    root = tmp_path / "comp"
    truth, test_truth = write_competition(root)
    return root, truth, test_truth


# ---------------------------------------------------------------- weights on Gram matrices


def test_project_simplex():
    v = np.random.default_rng(0).normal(size=(200, 5)) * 3
    w = project_simplex(v)
    assert np.allclose(w.sum(axis=1), 1) and (w >= 0).all()
    assert np.allclose(project_simplex(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])


def test_fit_weights_inverse_variance_exact():
    sigmas = np.array([1.0, 2.0, 3.0])
    w = fit_weights(np.diag(sigmas**2) * 1000).weights
    expected = sigmas**-2 / (sigmas**-2).sum()
    assert np.allclose(w, expected, atol=1e-6)


def test_fit_weights_inverse_variance_sampled():
    rng = np.random.default_rng(0)
    sigmas = np.array([1.0, 1.5, 3.0])
    resid = rng.normal(size=(3, 50_000)) * sigmas[:, None]
    w = fit_weights(resid @ resid.T).weights
    assert np.allclose(w, sigmas**-2 / (sigmas**-2).sum(), atol=0.02)


def test_fit_weights_matches_a_reference_solver():
    rng = np.random.default_rng(1)
    for _ in range(20):
        r = int(rng.integers(2, 7))
        resid = rng.normal(size=(r, 60)) * rng.uniform(0.3, 2, (r, 1)) + rng.normal(size=60) * rng.uniform(0, 1.5)
        gram = resid @ resid.T
        w = fit_weights(gram).weights
        ref = minimize(
            lambda x, g=gram: x @ g @ x,
            np.full(r, 1 / r),
            method="SLSQP",
            bounds=[(0, 1)] * r,
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
            options={"ftol": 1e-14},
        )
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-9
        assert w @ gram @ w <= ref.fun * (1 + 1e-7)


def test_a_useless_correlated_run_gets_no_weight():
    rng = np.random.default_rng(2)
    good = rng.normal(size=10_000)
    bad = 2 * good + rng.normal(size=10_000)  # same errors, amplified: never worth mixing in
    other = rng.normal(size=10_000)
    resid = np.stack([good, bad, other])
    w = fit_weights(resid @ resid.T).weights
    assert w[1] < 1e-6 and w[0] > 0.3 and w[2] > 0.3


def test_simplex_qp_batched():
    gram = np.stack([np.diag([1.0, 4.0]), np.diag([4.0, 1.0])])
    assert np.allclose(simplex_qp(gram), [[0.8, 0.2], [0.2, 0.8]], atol=1e-6)


def test_per_point_weights_and_shrinkage():
    # run 0 is good on the first half of the points, run 1 on the second half
    good, bad = 1.0, 9.0
    point_grams = np.stack([np.diag([good, bad]) if p < 4 else np.diag([bad, good]) for p in range(8)]) * 100
    alone = fit_per_point(point_grams, shrink=0.0).weights
    assert np.allclose(alone[:4], [0.9, 0.1], atol=1e-6) and np.allclose(alone[4:], [0.1, 0.9], atol=1e-6)
    shared = fit_per_point(point_grams, shrink=np.inf).weights
    assert np.allclose(shared, fit_weights(point_grams.sum(0)).weights) and np.allclose(shared, 0.5, atol=1e-6)
    mid = fit_per_point(point_grams, shrink=1.0).weights
    assert 0.5 < mid[0, 0] < 0.9 and 0.1 < mid[4, 0] < 0.5  # between per-point and global


def test_per_point_cv_picks_little_shrinkage_when_points_differ():
    rng = np.random.default_rng(3)
    n, p = 400, 6
    sig = np.where(np.arange(p)[:, None] < 3, [1.0, 3.0], [3.0, 1.0])  # P, R
    resid = rng.normal(size=(n, p, 2, 2)) * sig[None, :, None, :]  # rows, P, coord, R
    folds = np.arange(n) % 4
    grams = np.stack([np.einsum("npcr,npcs->prs", resid[folds == f], resid[folds == f]) for f in range(4)])
    fit = fit_per_point_cv(grams)
    assert fit.info["shrink"] != "inf" and fit.info["shrink"] <= 0.25
    assert fit.weights[0, 0] > 0.8 and fit.weights[-1, 1] > 0.8


def test_hill_climb():
    equal = fit_hill_climb(np.eye(3) * 10)
    assert np.allclose(equal.weights, 1 / 3) and sum(equal.info["counts"]) % 3 == 0
    dominant = fit_hill_climb(np.diag([1.0, 100.0, 100.0]), steps=50)
    assert dominant.info["counts"][0] == max(dominant.info["counts"])
    assert dominant.weights[0] > 0.9
    w = fit_hill_climb(np.diag([1.0, 2.0, 4.0])).weights
    assert abs(w.sum() - 1) < 1e-12 and (w >= 0).all()


def test_fold_point_grams_matches_direct_sum_with_chunking(monkeypatch):
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(37, 5, 2))
    preds = [truth + rng.normal(size=truth.shape) for _ in range(3)]
    folds = rng.integers(0, 3, size=37)
    monkeypatch.setattr(nested, "CHUNK_BYTES", 3 * 5 * 2 * 8 * 4)  # 4 rows per chunk
    grams = fold_point_grams(preds, truth, folds, 3)
    resid = np.stack([p - truth for p in preds], axis=-1)  # N, P, 2, R
    for f in range(3):
        assert np.allclose(grams[f], np.einsum("npcr,npcs->prs", resid[folds == f], resid[folds == f]))


def _grams(n=150, p=8, sigmas=(1.0, 1.3, 2.0), k=3, seed=5):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, p, 2))
    preds = [truth + rng.normal(size=truth.shape) * s for s in sigmas]
    folds = np.arange(n) % k
    return fold_point_grams(preds, truth, folds, k), np.bincount(folds)


@pytest.mark.parametrize("method", list(Method))
def test_nested_cv_is_honest(method):
    grams, rows = _grams(n=60, p=12, sigmas=(1.0, 1.1, 1.2, 1.3))  # little data: fitting overfits
    score = nested_cv(method, grams, rows)
    if method is Method.mean:
        assert score.mse == pytest.approx(score.in_sample_mse)
    else:
        assert score.mse >= score.in_sample_mse
    assert score.fold_mse.shape == (3,) and score.point_mse.shape == (12,)
    assert np.average(score.fold_mse, weights=rows) == pytest.approx(score.mse)
    assert score.point_mse.mean() == pytest.approx(score.mse)


@pytest.mark.parametrize("method", [Method.weights, Method.per_point, Method.hill_climb])
def test_blend_beats_best_single_run_in_nested_cv(method):
    grams, rows = _grams(n=600)
    single = np.diagonal(grams.sum(0), axis1=-2, axis2=-1).sum(0) / (rows.sum() * 8 * 2)
    score = nested_cv(method, grams, rows)
    assert score.mse < single.min() * 0.85


def test_blend_sse_broadcasts_global_weights():
    grams, _ = _grams()
    total = grams.sum(0)
    w = np.array([0.5, 0.3, 0.2])
    assert np.allclose(blend_sse(w, total), blend_sse(np.tile(w, (total.shape[0], 1)), total))


# ---------------------------------------------------------------- blend_runs end to end


def test_blend_runs_writes_valid_submission_json_and_png(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5, 2.5))
    out = tmp_path / "subs"
    result = blend_runs(runs, root, method="weights", name="b1", out_dir=out)
    assert {p.name for p in out.iterdir()} == {"b1.csv", "b1.json", "b1.npz", "b1.png"}
    assert result.blend_mse < result.best_run.oof_mse
    assert result.in_sample_mse <= result.blend_mse
    test_points = read_test_points(root / "test/test_points.csv", truth.shape[1])
    values = validate_submission(out / "b1.csv", test_points)
    # the CSV is the weighted sum of the runs' test predictions at the requested points
    w = np.array([r.weight for r in result.runs])
    tests = [np.load(r / "test.npy") for r in runs]
    expected = select_requested(sum(wi * t.astype(np.float64) for wi, t in zip(w, tests, strict=True)), test_points)
    assert np.allclose(values, expected, atol=2e-3)
    record = json.loads((out / "b1.json").read_text())
    assert record["method"] == "weights" and record["blend_mse"] == pytest.approx(result.blend_mse)
    assert [r["run"] for r in record["runs"]] == ["run0", "run1", "run2"]
    assert all(r["oof_mse"] > 0 for r in record["runs"])
    assert record["runs"][0]["oof_mse"] == pytest.approx(json.loads((runs[0] / "metrics.json").read_text())["oof_mse"])
    assert record["inputs"][1]["sha256"]["oof.npy"] == file_sha256(runs[1] / "oof.npy")
    assert record["kind"] == "blend" and record["inputs"][1]["path"] == "../runs/run1"  # beside the record's folder
    assert record["submission_sha256"] == file_sha256(out / "b1.csv")
    assert sum(record["weights"].values()) == pytest.approx(1, abs=1e-5)
    assert (out / "b1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blend_runs_per_point_records_point_weights(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    result = blend_runs(runs, root, method=Method.per_point, out_dir=tmp_path / "subs")
    record = read_record(result.json)
    assert result.name == "blend-per-point" and result.npz == result.json.with_suffix(".npz")
    weights = record.params["all.weights"]
    assert weights.shape == (truth.shape[1], 2) and np.allclose(weights.sum(axis=1), 1)
    assert list(record.weights.values()) == pytest.approx(weights.mean(axis=0), abs=1e-6)
    assert "shrink" in record.fit


def test_a_single_run_passes_through(comp, tmp_path):
    root, truth, test_truth = comp
    (run,) = noisy_runs(root, truth, test_truth, sigmas=(1.0,))
    result = blend_runs([run], root, method="hill-climb", out_dir=tmp_path / "subs")
    assert result.runs[0].weight == 1.0
    assert result.blend_mse == pytest.approx(result.runs[0].oof_mse)


def test_refuses_runs_from_another_split(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    metrics["split"]["folds_sha256"] = "f" * 64
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(KitError, match="different fold split") as info:
        blend_runs(runs, root, out_dir=tmp_path / "subs")
    assert str(runs[1]) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "subs").exists()


def test_refuses_runs_when_folds_changed(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    names = np.array([f"img_{i:04d}.jpg" for i in range(len(truth))])
    write_folds(root / "folds.csv", make_folds(names, k=3, seed=99))
    with pytest.raises(KitError, match="folds.csv sha256"):
        blend_runs(runs, root, out_dir=tmp_path / "subs")


def test_refuses_mismatched_points_and_rows(comp, tmp_path):
    root, truth, test_truth = comp
    split = split_block(root)
    good = write_run(tmp_path / "runs/good", truth, test_truth, split)
    other = dict(split, train_names_sha256="0" * 64)
    bad = write_run(tmp_path / "runs/bad", truth, test_truth, other)
    with pytest.raises(KitError, match="different training rows"):
        blend_runs([good, bad], root, out_dir=tmp_path / "subs")
    with pytest.raises(KitError, match="training rows differ"):
        blend_runs([bad], root, out_dir=tmp_path / "subs")


def test_refuses_nan_oof(comp, tmp_path):
    root, truth, test_truth = comp
    oof = truth.copy()
    oof[3, 2, 0] = np.nan
    run = write_run(tmp_path / "runs/nan", oof, test_truth, split_block(root))
    with pytest.raises(KitError, match="NaN"):
        blend_runs([run], root, out_dir=tmp_path / "subs")


def test_failed_blend_leaves_old_files_untouched(comp, tmp_path, monkeypatch):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    out = tmp_path / "subs"
    blend_runs(runs, root, name="keep", out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr("kit.ensemble.blend.plot_point_errors", boom)
    with pytest.raises(RuntimeError):
        blend_runs(runs, root, method="mean", name="keep", out_dir=out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_provenance_hashes_the_runs_artifact_files(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    record = json.loads(blend_runs(runs, root, name="p", out_dir=tmp_path / "subs").json.read_text())
    for entry, path in zip(record["inputs"], runs, strict=True):
        files = load_run(path).artifact_files()
        assert set(entry) == {"run", "path", "identity", "sha256"} and set(entry["sha256"]) == set(files)
        assert all(entry["sha256"][name] == file_sha256(file) for name, file in files.items())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["train", ".", "new/sub", "link/train"])
def test_refuses_an_out_dir_inside_the_data(comp, tmp_path, where):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0,))
    (tmp_path / "link").symlink_to(root)
    out = tmp_path / where if where.startswith("link") else root / where
    before = _snapshot(root)
    with pytest.raises(KitError, match="inside the competition folder") as info:
        blend_runs(runs, root, name="landmarks", out_dir=out)
    assert str(out) in str(info.value) and str(root) in str(info.value) and "\n" not in str(info.value)
    assert _snapshot(root) == before and not (root / "new").exists()


def test_refuses_an_out_dir_inside_a_run(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    before = _snapshot(runs[1])
    with pytest.raises(KitError, match="inside the run folder"):
        blend_runs(runs, root, name="metrics", out_dir=runs[1])
    assert _snapshot(runs[1]) == before


def test_existing_outputs_need_force(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    out = tmp_path / "subs"
    blend_runs(runs, root, method="mean", name="b", out_dir=out)
    before = _snapshot(out)
    with pytest.raises(KitError, match="already exists; pass --force") as info:
        blend_runs(runs, root, method="weights", name="b", out_dir=out)
    assert str(out / "b.csv") in str(info.value)
    assert _snapshot(out) == before
    (out / "b.csv").unlink()  # any one of the three is enough to refuse
    with pytest.raises(KitError, match="b.json: already exists"):
        blend_runs(runs, root, method="weights", name="b", out_dir=out)
    result = blend_runs(runs, root, method="weights", name="b", out_dir=out, force=True)
    after = _snapshot(out)
    assert set(after) == {"b.csv", "b.json", "b.npz", "b.png"}
    assert json.loads(after["b.json"])["method"] == "weights" and after["b.json"] != before["b.json"]
    assert json.loads(after["b.json"])["submission_sha256"] == file_sha256(result.csv)


def _nme(pred, truth, sizes):
    return 100 * np.mean(np.hypot(*np.moveaxis(pred - truth, -1, 0)).mean(axis=1) / sizes)


def _face_box(truth):
    extent = truth.max(axis=1) - truth.min(axis=1)
    return np.sqrt(extent[:, 0] * extent[:, 1])


def test_the_mean_blend_nme_is_the_nme_of_the_mean_prediction(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0, 3.0))
    result = blend_runs(runs, root, method="mean", out_dir=tmp_path / "subs")
    oofs = [np.load(run / "oof.npy").astype(np.float64) for run in runs]
    sizes = _face_box(truth.astype(np.float64))
    # every fold's weights are equal: the nested-CV blend is the runs' mean on every row
    assert result.blend_scores.nme == pytest.approx(_nme(np.mean(oofs, axis=0), truth, sizes))
    assert result.in_sample_scores.nme == pytest.approx(result.blend_scores.nme)
    assert result.blend_scores.mse == result.blend_mse
    for run, oof in zip(result.runs, oofs, strict=True):
        assert run.oof_nme == pytest.approx(_nme(oof, truth, sizes))
    record = json.loads(result.json.read_text())
    assert record["blend_nme"] == pytest.approx(result.blend_scores.nme) and record["nme_points"] is None
    assert record["in_sample_nme"] == pytest.approx(result.in_sample_scores.nme)
    assert record["blend_failure_rate"] == result.blend_scores.failure_rate == 0.0
    assert [r["oof_nme"] for r in record["runs"]] == pytest.approx([r.oof_nme for r in result.runs])
    assert "face box" in record["nme_note"]


@pytest.mark.parametrize("method", ["weights", "per-point"])
def test_the_nested_blend_nme_blends_each_fold_with_the_weights_fitted_without_it(comp, tmp_path, monkeypatch, method):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.2, 2.5))
    monkeypatch.setattr(nested, "CHUNK_BYTES", 3 * 10 * 2 * 8 * 7)  # a few rows per chunk
    result = blend_runs(runs, root, method=method, out_dir=tmp_path / "subs", nme_points=(2, 5))
    oofs = np.stack([np.load(run / "oof.npy").astype(np.float64) for run in runs], -1)  # N, P, 2, R
    folds = np.array([int(line.split(",")[1]) for line in (root / "folds.csv").read_text().splitlines()[1:]])
    grams = fold_point_grams(list(np.moveaxis(oofs, -1, 0)), truth, folds, 3)
    score = nested_cv(method, grams, np.bincount(folds))
    blended = np.empty(truth.shape)
    for f in range(3):
        assert np.allclose(score.fold_weights[f], fit(method, np.delete(grams, f, axis=0)).weights)
        w = np.broadcast_to(score.fold_weights[f], (truth.shape[1], 3))  # P, R
        blended[folds == f] = (oofs[folds == f] * w[None, :, None, :]).sum(-1)
    sizes = np.hypot(*(truth[:, 2] - truth[:, 5]).T.astype(np.float64))
    assert result.blend_scores.nme == pytest.approx(_nme(blended, truth, sizes))
    assert result.blend_scores.nme < min(run.oof_nme for run in result.runs)
    assert json.loads(result.json.read_text())["nme_points"] == [2, 5]
    assert result.nme_points == (2, 5)


def test_the_data_names_the_nme_points_and_a_flat_face_is_refused(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 2.0))
    (root / "nme_points.txt").write_text("0 1\n")
    result = blend_runs(runs, root, method="mean", out_dir=tmp_path / "subs")
    sizes = np.hypot(*(truth[:, 0] - truth[:, 1]).T.astype(np.float64))
    oofs = [np.load(run / "oof.npy").astype(np.float64) for run in runs]
    assert result.nme_points == (0, 1)
    assert result.blend_scores.nme == pytest.approx(_nme(np.mean(oofs, axis=0), truth, sizes))
    with pytest.raises(KitError, match=r"nme_points.txt: point 10 out of range"):
        (root / "nme_points.txt").write_text("3 10\n")
        blend_runs(runs, root, method="mean", out_dir=tmp_path / "subs", force=True)
    (root / "nme_points.txt").write_text("3 4\n")
    lines = (root / "train/landmarks.csv").read_text().splitlines()
    fields = lines[5].split("\t")
    fields[9:11] = fields[7:9]  # row 4: point 4 where point 3 is
    lines[5] = "\t".join(fields)
    (root / "train/landmarks.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(KitError, match=r"landmarks.csv: row 4 \(img_0004.jpg\): face size 0 \(points 3-4\)"):
        blend_runs(runs, root, method="mean", out_dir=tmp_path / "subs", force=True)


# ---------------------------------------------------------------- CLI


def test_cli_blend_prints_table(comp, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5))
    out = tmp_path / "subs"
    options = ["--data", str(root), "--method", "hill-climb", "--name", "hc", "--out-dir", str(out)]
    result = runner.invoke(app, ["blend", *map(str, runs), *options])
    assert result.exit_code == 0, result.output
    assert "run0" in result.output and "nested CV" in result.output and "better than the best run" in result.output
    assert (out / "hc.csv").is_file()
    record = json.loads((out / "hc.json").read_text())
    assert f"{record['blend_mse']:.4f}" in result.output
    # NME and failure rate beside each MSE: the runs' and the blend's, nested CV and in-sample
    lines = result.output.splitlines()
    for label, nme, failed in [
        ("blend, nested CV", record["blend_nme"], record["blend_failure_rate"]),
        ("blend, in-sample", record["in_sample_nme"], record["in_sample_failure_rate"]),
        *[(run["run"], run["oof_nme"], run["oof_failure_rate"]) for run in record["runs"]],
    ]:
        line = next(line for line in lines if label in line)
        assert f" {nme:.2f}% " in line and f" {failed:.1f}% " in line, line
    assert "NME" in result.output and ">10%" in result.output and "(face box)" in result.output
    rerun = runner.invoke(app, ["blend", *map(str, runs), *options, "--force", "--nme-points", "0,1"])
    assert rerun.exit_code == 0, rerun.output
    assert "(points 0-1)" in rerun.output and json.loads((out / "hc.json").read_text())["nme_points"] == [0, 1]
    bad = runner.invoke(app, ["blend", *map(str, runs), *options, "--force", "--nme-points", "0,10"])
    assert bad.exit_code == 1 and "--nme-points: point 10 out of range" in bad.output


def test_cli_blend_errors(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5))
    missing = runner.invoke(app, ["blend", str(runs[0]), str(tmp_path / "nope"), "--data", str(root)])
    assert missing.exit_code == 1 and "missing" in missing.stderr and "Traceback" not in missing.output
    bad_method = runner.invoke(app, ["blend", str(runs[0]), "--data", str(root), "--method", "median"])
    assert bad_method.exit_code == 2
    bad_name = runner.invoke(app, ["blend", str(runs[0]), "--data", str(root), "--name", "../x"])
    assert bad_name.exit_code == 1 and "--name" in bad_name.stderr


def test_cli_blend_refuses_out_dir_inside_data(comp, tmp_path):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5))
    landmarks = (root / "train" / "landmarks.csv").read_bytes()
    args = ["blend", *map(str, runs), "--data", str(root), "--name", "landmarks", "--out-dir", str(root / "train")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--out-dir {root / 'train'}: inside the competition folder {root}" in " ".join(result.stderr.split())
    assert (root / "train" / "landmarks.csv").read_bytes() == landmarks
    assert sorted(p.name for p in (root / "train").iterdir()) == ["landmarks.csv"]


def test_cli_blend_force(comp, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5))
    out = tmp_path / "subs"
    args = ["blend", *map(str, runs), "--data", str(root), "--name", "s", "--out-dir", str(out)]
    assert runner.invoke(app, [*args, "--method", "mean"]).exit_code == 0
    before = _snapshot(out)
    refused = runner.invoke(app, [*args, "--method", "weights"])
    assert refused.exit_code == 1 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert _snapshot(out) == before
    forced = runner.invoke(app, [*args, "--method", "weights", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "s.json").read_text())["method"] == "weights"
    assert set(_snapshot(out)) == {"s.csv", "s.json", "s.npz", "s.png"}


def test_refuse_inside(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for inside in (root, root / "train", root / "not" / "yet", Path("data/train/../x"), Path("other/../data")):
        with pytest.raises(KitError, match=r"^--out-dir .*: inside the competition folder .*data; write outputs"):
            refuse_inside(inside, Path("data"), "--out-dir")
    for outside in (tmp_path / "data2", tmp_path, root / ".." / "subs", Path("data-subs")):
        refuse_inside(outside, root, "--out-dir")
    with pytest.raises(KitError, match="--out-dir data/train: inside the competition folder data; write"):
        refuse_inside(Path("data/train"), Path("data"), "--out-dir")


class _Passes:
    """A ``report_passes`` progress that records each pass's description, total and rows advanced."""

    def __init__(self):
        self.passes: list[list] = []

    @contextlib.contextmanager
    def __call__(self, total: int, description: str):
        entry = [description, total, 0]
        self.passes.append(entry)

        def advance(rows: int) -> None:
            entry[2] += rows

        yield advance


def test_every_pass_over_the_rows_reports_its_progress(comp, tmp_path, monkeypatch):
    root, truth, test_truth = comp
    runs = noisy_runs(root, truth, test_truth, sigmas=(1.0, 1.5))
    monkeypatch.setattr(nested, "CHUNK_BYTES", 8 * 2 * truth.shape[1] * 3 * 7)  # 7 rows a chunk: many advances
    passes = _Passes()
    with report_passes(passes):
        blend_runs(runs, root, method="weights", out_dir=tmp_path / "subs")
    names = [p[0] for p in passes.passes]
    assert names == ["OOF rows: blend statistics", "OOF rows: NME", "test rows: blend"]
    assert [p[1] for p in passes.passes] == [len(truth), len(truth), len(test_truth)]
    assert all(done == total for _, total, done in passes.passes)  # every row counted once
    passes.passes.clear()
    blend_runs(runs, root, method="weights", out_dir=tmp_path / "subs", force=True)
    assert passes.passes == []  # outside the block: no progress
