"""``stack_runs`` and ``kit stack`` end to end on tiny synthetic competitions (tables and run folders only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.cli.stack import verdict
from kit.data.folds import make_folds, write_folds
from kit.data.landmarks import point_columns, read_test_points
from kit.ensemble.blend import blend_runs
from kit.ensemble.record import read_record
from kit.ensemble.stack import Model, stack_runs
from kit.errors import KitError
from kit.io import file_sha256
from kit.runs import names_sha256
from kit.submit.format import select_requested, validate_submission

runner = CliRunner()


def write_competition(root: Path, n_train: int = 120, n_test: int = 10, n_points: int = 8, k: int = 3, seed: int = 0):
    """train/landmarks.csv (faces: a ring of points, scaled and moved), test/test_points.csv, folds.csv."""
    rng = np.random.default_rng(seed)
    angle = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    ring = np.stack([np.cos(angle), np.sin(angle)], -1)

    def faces(n):
        jitter = rng.normal(0, 2, (n, n_points, 2))
        return rng.uniform(60, 90, (n, 1, 2)) + rng.uniform(15, 30, (n, 1, 1)) * ring + jitter

    truth, test_truth = faces(n_train).round().astype(np.float32), faces(n_test).astype(np.float32)
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


def split_block(root: Path, truth: np.ndarray) -> dict:
    test_names = [line.split("\t")[0] for line in (root / "test/test_points.csv").read_text().splitlines()[1:]]
    return {
        "folds_sha256": file_sha256(root / "folds.csv"),
        "train_names_sha256": names_sha256(np.array([f"img_{i:04d}.jpg" for i in range(len(truth))])),
        "test_names_sha256": names_sha256(np.array(test_names)),
        "n_points": truth.shape[1],
    }


def write_run(path: Path, oof: np.ndarray, test: np.ndarray, split: dict, truth: np.ndarray) -> Path:
    """A finished run folder through the run contract's files (metrics record, oof.npy, test.npy)."""
    path.mkdir(parents=True)
    np.save(path / "oof.npy", oof.astype(np.float32))
    np.save(path / "test.npy", test.astype(np.float32))
    metrics = {
        "name": path.name,
        "family": "regression",
        "backbone": "test",
        "oof_mse": float(np.mean((oof - truth) ** 2)),
        "folds": [],
        "wall_seconds": 0.0,
        "images_per_second": 0.0,
        "tta": {},
        "split": split,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def biased_runs(root: Path, truth, test_truth, sigmas=(1.0, 1.5), bias: float = 3.0, seed: int = 1) -> list[Path]:
    """Noisy runs, each with a fixed per-point offset (which a blend can't remove and a stacker can)."""
    rng = np.random.default_rng(seed)
    split = split_block(root, truth)
    runs = []
    for i, sigma in enumerate(sigmas):
        offset = rng.uniform(-bias, bias, truth.shape[1:])
        oof = truth + offset + rng.normal(0, sigma, truth.shape)
        test = test_truth + offset + rng.normal(0, sigma, test_truth.shape)
        runs.append(write_run(root.parent / "runs" / f"run{i}", oof, test, split, truth))
    return runs


@pytest.fixture
def comp(tmp_path):
    root = tmp_path / "comp"
    truth, test_truth = write_competition(root)
    return root, truth, test_truth


def read_folds(path: Path) -> tuple[list[str], np.ndarray]:
    names, folds = zip(*(line.split(",") for line in path.read_text().splitlines()[1:]), strict=True)
    return list(names), np.array(folds, dtype=int)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- stack_runs


@pytest.mark.slow  # builds big models or spawns processes
def test_ridge_stack_writes_submission_record_and_picture(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    out = tmp_path / "subs"
    result = stack_runs(runs, root, model="ridge", name="s1", out_dir=out)
    assert {p.name for p in out.iterdir()} == {"s1.csv", "s1.json", "s1.npz", "s1.png"}
    assert (out / "s1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "s1.json").read_text())
    assert record["kind"] == "stack" and record["method"] == "ridge" and result.model is Model.ridge
    assert record["stack_mse"] == pytest.approx(result.stack_mse) and result.in_sample_mse <= result.stack_mse
    _, folds = read_folds(root / "folds.csv")
    assert np.average(record["stack_fold_mse"], weights=np.bincount(folds)) == pytest.approx(result.stack_mse)
    assert record["submission_sha256"] == file_sha256(out / "s1.csv")
    # the same provenance as a blend of the same runs, and the blend's own nested-CV score
    # the best blend is the lowest nested-CV MSE over every blend method, each as kit blend scores it
    blends = {
        m: blend_runs(runs, root, method=m, name=m, out_dir=tmp_path / "blends")
        for m in ("mean", "weights", "per-point", "hill-climb")
    }
    blend_record = json.loads(blends["weights"].json.read_text())
    for key in ("inputs", "split", "data"):
        assert record[key] == blend_record[key], key
    best = min(blends, key=lambda m: blends[m].blend_mse)
    assert record["best_blend"]["method"] == best == result.blend_method
    assert record["best_blend"]["mse"] == pytest.approx(blends[best].blend_mse) == pytest.approx(result.blend_mse)
    for method, blend in blends.items():
        assert record["best_blend"]["method_mse"][method] == pytest.approx(blend.blend_mse)
    assert record["beats_best_blend"] is True and result.gain > 0  # per-point offsets: only the stack removes them
    # the submission is the recorded per-point model (NAME.npz) applied to the runs' test predictions
    w, b = _ridge(result.json)
    tests = np.stack([np.load(run / "test.npy").astype(np.float64) for run in runs], axis=-1)
    expected = b + (tests * w).sum(axis=-1)
    test_points = read_test_points(root / "test/test_points.csv", truth.shape[1])
    values = validate_submission(out / "s1.csv", test_points)
    assert np.allclose(values, select_requested(expected, test_points), atol=2e-3)
    assert np.mean((expected - test_truth) ** 2) < np.mean((np.load(runs[0] / "test.npy") - test_truth) ** 2)


def test_pca_ridge_stack(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth, sigmas=(1.0, 1.5, 2.0))
    result = stack_runs(runs, root, model=Model.pca_ridge, out_dir=tmp_path / "subs")
    assert result.name == "stack-pca-ridge" and result.csv.is_file() and result.png.is_file()
    record = json.loads(result.json.read_text())
    shape = record["stacker"]["shape"]
    assert shape["components"] in shape["components_grid"] and record["method"] == "pca-ridge"
    assert [entry["fold"] for entry in record["fold_models"]] == [0, 1, 2]
    assert all(entry["fold"] not in entry["fitted_on"] for entry in record["fold_models"])
    assert np.isfinite(result.stack_mse) and result.in_sample_mse <= result.stack_mse


def _ridge(record_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ridge stacker fitted on all folds, from the record: weights (P, 2, R) and intercepts (P, 2)."""
    params = read_record(record_path).params
    n_points = params["all.intercept"].shape[0] // 2
    return params["all.weights"].reshape(n_points, 2, -1), params["all.intercept"].reshape(n_points, 2)


def _nme(pred, truth, sizes):
    return 100 * np.mean(np.hypot(*np.moveaxis(pred - truth, -1, 0)).mean(axis=1) / sizes)


def test_stack_nme_beside_every_mse(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    result = stack_runs(runs, root, model="ridge", name="s", out_dir=tmp_path / "subs", nme_points=(0, 4))
    record = json.loads(result.json.read_text())
    sizes = np.hypot(*(truth[:, 0] - truth[:, 4]).T.astype(np.float64))
    oofs = [np.load(run / "oof.npy").astype(np.float64) for run in runs]
    assert [r["oof_nme"] for r in record["runs"]] == pytest.approx([_nme(oof, truth, sizes) for oof in oofs])
    assert [r.oof_nme for r in result.runs] == pytest.approx([r["oof_nme"] for r in record["runs"]])
    # in-sample: the recorded all-folds stacker applied to the OOF predictions
    w, b = _ridge(result.json)
    in_sample = b + (np.stack(oofs, axis=-1) * w).sum(axis=-1)
    assert record["in_sample_nme"] == pytest.approx(_nme(in_sample, truth, sizes), rel=1e-4)
    assert result.in_sample_scores.nme == pytest.approx(record["in_sample_nme"])
    # nested CV: per-point offsets are what only the stack removes, in NME as in MSE
    assert record["stack_nme"] == result.stack_scores.nme < min(r["oof_nme"] for r in record["runs"])
    assert record["stack_nme"] < record["best_blend"]["nme"] and record["nme_points"] == [0, 4]
    assert result.stack_scores.mse == result.stack_mse and result.blend_scores.mse == result.blend_mse
    for key in ("stack_failure_rate", "in_sample_failure_rate"):
        assert 0 <= record[key] <= 100
    # the best blend's NME is the one kit blend gives the same method
    blend = blend_runs(runs, root, method=result.blend_method, out_dir=tmp_path / "b", nme_points=(0, 4))
    assert record["best_blend"]["nme"] == pytest.approx(blend.blend_scores.nme)
    assert record["best_blend"]["failure_rate"] == pytest.approx(blend.blend_scores.failure_rate)


def test_existing_outputs_need_force(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    out = tmp_path / "subs"
    stack_runs(runs, root, name="s", out_dir=out)
    before = _snapshot(out)
    with pytest.raises(KitError, match="already exists; pass --force") as info:
        stack_runs(runs, root, model="pca-ridge", name="s", out_dir=out)
    assert str(out / "s.csv") in str(info.value) and "\n" not in str(info.value)
    assert _snapshot(out) == before
    stack_runs(runs, root, model="pca-ridge", name="s", out_dir=out, force=True)
    after = _snapshot(out)
    assert set(after) == {"s.csv", "s.json", "s.npz", "s.png"} and json.loads(after["s.json"])["method"] == "pca-ridge"


def test_refuses_runs_from_another_split(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    metrics["split"]["folds_sha256"] = "f" * 64
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(KitError, match="different fold split") as info:
        stack_runs(runs, root, out_dir=tmp_path / "subs")
    assert str(runs[1]) in str(info.value)
    assert not (tmp_path / "subs").exists()


def test_refuses_out_dir_inside_the_data_and_nan_predictions(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    with pytest.raises(KitError, match="inside the competition folder"):
        stack_runs(runs, root, out_dir=root / "train")
    oof = np.load(runs[0] / "oof.npy")
    oof[5, 1, 0] = np.nan
    np.save(runs[0] / "oof.npy", oof)
    with pytest.raises(KitError, match="NaN"):
        stack_runs(runs, root, out_dir=tmp_path / "subs")
    assert not (tmp_path / "subs").exists()


# ---------------------------------------------------------------- CLI


def test_verdict():
    assert verdict(9.0, 10.0) == "stack beats the best blend (weights) by 1.0000 (10.0%) in nested CV"
    assert verdict(10.5, 10.0).startswith("stack does not beat the best blend (weights): 0.5000 (5.0%) worse")


@pytest.mark.parametrize("model", ["ridge", "pca-ridge"])
def test_cli_stack_prints_the_blend_table(comp, tmp_path, monkeypatch, model):
    monkeypatch.setenv("COLUMNS", "200")
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    out = tmp_path / "subs"
    args = ["stack", *map(str, runs), "--data", str(root), "--model", model, "--name", "st", "--out-dir", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "st.json").read_text())
    best = f"best blend ({record['best_blend']['method']}), nested CV"
    for text in ("run0 *", "run1", "stack, nested CV", "in-sample (optimistic)", best):
        assert text in result.output, text
    for value in (record["stack_mse"], record["in_sample_mse"], record["best_blend"]["mse"]):
        assert f"{value:.4f}" in result.output
    lines = result.output.splitlines()
    for label, nme, failed in [
        ("stack, nested CV", record["stack_nme"], record["stack_failure_rate"]),
        ("stack, in-sample", record["in_sample_nme"], record["in_sample_failure_rate"]),
        (best, record["best_blend"]["nme"], record["best_blend"]["failure_rate"]),
        *[(run["run"], run["oof_nme"], run["oof_failure_rate"]) for run in record["runs"]],
    ]:
        line = next(line for line in lines if label in line)
        assert f" {nme:.2f}% " in line and f" {failed:.1f}% " in line, line
    assert "NME: mean point error / face size (face box)" in result.output
    assert verdict(record["stack_mse"], record["best_blend"]["mse"], record["best_blend"]["method"]) in result.output
    assert "stack beats the best blend" in result.output
    assert f"wrote {out / 'st.csv'}, st.json, st.npz, st.png" in result.output


def test_cli_stack_refusals(comp, tmp_path):
    root, truth, test_truth = comp
    runs = biased_runs(root, truth, test_truth)
    out = tmp_path / "subs"
    args = ["stack", *map(str, runs), "--data", str(root), "--name", "s", "--out-dir", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = _snapshot(out)
    refused = runner.invoke(app, [*args, "--model", "pca-ridge"])
    assert refused.exit_code == 1 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.output and _snapshot(out) == before
    forced = runner.invoke(app, [*args, "--model", "pca-ridge", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "s.json").read_text())["method"] == "pca-ridge"
    assert runner.invoke(app, [*args, "--model", "lasso"]).exit_code == 2

    metrics = json.loads((runs[0] / "metrics.json").read_text())
    metrics["split"]["folds_sha256"] = "0" * 64
    (runs[0] / "metrics.json").write_text(json.dumps(metrics))
    other = runner.invoke(app, [*args[:-4], "--name", "t", "--out-dir", str(out)])
    assert other.exit_code == 1 and "different fold split" in other.stderr and "Traceback" not in other.output
    assert not (out / "t.csv").exists()
