"""``kit infer``: landmarks for any folder of images from a run's fold models, equal to test.npy, or from a blend's or
stack's record, equal to its submission."""

import numpy as np
import pandas as pd
import pytest
from tiny import build_competition, tiny_pipeline
from typer.testing import CliRunner

from kit.cli import app
from kit.config import pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.data.prepare import prepare_crops
from kit.ensemble import blend_runs, read_record, stack_runs
from kit.errors import KitError
from kit.predict.infer import infer, load_crops
from kit.runs import load_run
from kit.submit.format import select_requested, validate_submission
from kit.train import fold_train

pytestmark = pytest.mark.slow  # trains models

TINY = tiny_pipeline(
    {"model": {"pretrained": {"source": "none"}}, "input": {"margin": 0.1}, "train": {"batch_size": 4}}
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("infer")
    comp = build_competition(base / "comp", n_train=8, n_test=5, n_points=20, size=(44, 52))
    write_folds(Competition.load(comp.root).folds_csv, make_folds(comp.train_names, k=2, seed=0))
    fold_train(pipeline_from_dict(TINY | {"name": "flip", "tta": {"hflip": True}}), comp.root, out_dir=base / "runs")
    fold_train(
        pipeline_from_dict(TINY | {"name": "plain", "train": TINY["train"] | {"seed": 1}}),
        comp.root,
        out_dir=base / "runs",
    )
    return base, comp.root


def _table(csv):
    table = pd.read_csv(csv, sep="\t")
    return table["file_name"].tolist(), table.drop(columns="file_name").to_numpy(np.float64).reshape(len(table), -1, 2)


def _by_name(run_test: np.ndarray, data):
    names = Competition.load(data).test.file_names.tolist()
    order = np.argsort(names)
    return [names[i] for i in order], run_test[order]


@pytest.mark.parametrize("name", ["flip", "plain"])
def test_infer_on_the_test_images_reproduces_test_npy(runs, tmp_path, name):
    base, data = runs
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        app,
        [
            "infer",
            str(base / "runs" / name),
            "--images",
            str(data / "test" / "images"),
            "--out",
            str(out),
            "--overlays",
            str(tmp_path / "png"),
        ],
    )
    assert result.exit_code == 0, result.output
    names, points = _table(out)
    expected_names, expected = _by_name(np.asarray(load_run(base / "runs" / name).test), data)
    assert names == expected_names and points.shape == (5, 20, 2)
    np.testing.assert_allclose(points, expected, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [n.replace(".jpg", ".png") for n in names]


def test_infer_from_a_blend_applies_its_weights(runs, tmp_path):
    base, data = runs
    blend = blend_runs(
        [base / "runs" / "flip", base / "runs" / "plain"], data, method="weights", name="b", out_dir=tmp_path / "subs"
    )
    weights = [run.weight for run in blend.runs]
    tests = [np.asarray(load_run(base / "runs" / r).test, np.float64) for r in ("flip", "plain")]
    _, expected = _by_name(weights[0] * tests[0] + weights[1] * tests[1], data)
    result = infer(blend.json, data / "test" / "images", tmp_path / "blend.csv")
    np.testing.assert_allclose(result.points, expected, atol=1e-3)


@pytest.mark.parametrize(("kind", "method"), [("stack", "ridge"), ("stack", "pca-ridge"), ("blend", "per-point")])
def test_infer_from_a_record_reproduces_its_submission_from_any_working_directory(
    runs, tmp_path, monkeypatch, kind, method
):
    base, data = runs
    monkeypatch.chdir(base)  # the record names its runs as given here, relative
    make = stack_runs if kind == "stack" else blend_runs
    result = make(["runs/flip", "runs/plain"], data, method, name="ens", out_dir=tmp_path / "subs")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    images = data / "test" / "images"
    done = CliRunner().invoke(app, ["infer", str(result.json), "--images", str(images), "--out", "ens.csv"])
    assert done.exit_code == 0, done.output
    names, points = _table(tmp_path / "elsewhere" / "ens.csv")
    test = Competition.load(data).test
    by_name = dict(zip(names, points, strict=True))
    in_test_order = np.stack([by_name[name] for name in test.file_names])
    submitted = validate_submission(result.csv, test)
    np.testing.assert_allclose(select_requested(in_test_order, test), submitted, atol=1e-3)
    if method == "per-point":  # one weight per point and run: the per-point weights are what infer applies
        assert read_record(result.json).params["all.weights"].shape == (20, 2)


def test_infer_refuses_bad_sources_and_existing_output(runs, tmp_path):
    base, data = runs
    images = data / "test" / "images"
    with pytest.raises(KitError, match="expected a finished run folder or a blend's or stack's .json"):
        infer(data / "train" / "landmarks.csv", images, tmp_path / "x.csv")
    with pytest.raises(KitError, match="metrics.json: missing"):
        infer(data, images, tmp_path / "x.csv")
    (tmp_path / "taken.csv").write_text("keep")
    with pytest.raises(KitError, match="taken.csv: exists"):
        infer(base / "runs" / "plain", images, tmp_path / "taken.csv")
    assert (tmp_path / "taken.csv").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitError, match="no images"):
        infer(base / "runs" / "plain", tmp_path / "empty", tmp_path / "y.csv")


def test_infer_crops_new_images_as_the_cache_does(make_competition):
    tiny = make_competition(n_train=2, n_test=3, size=(90, 100))  # 90 px to 32: JPEGs decoded at half scale
    cache = prepare_crops(tiny.root, "test", 32, 0.1, 4)
    crops, matrices = load_crops([tiny.test_image(i) for i in range(3)], 32, 0.1, 4)
    np.testing.assert_array_equal(crops, cache.images())
    np.testing.assert_array_equal(matrices, cache.transforms())
