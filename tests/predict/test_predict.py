"""``kit predict``: a finished run's predictions again from its fold checkpoints, into a new run folder."""

import json
import shutil
import typing

import numpy as np
import pytest
import yaml
from tiny import build_competition, tiny_pipeline
from typer.testing import CliRunner

from kit.cli import app
from kit.config import pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import KitError
from kit.io import file_sha256
from kit.metrics import mse
from kit.predict.repredict import repredict
from kit.runs import RunDir, load_run
from kit.train import fold_train

pytestmark = pytest.mark.slow  # trains models

TINY_HEATMAP = tiny_pipeline(
    {
        "name": "hm",
        "model": {
            "family": "heatmap",
            "backbone": "tu-test_resnet",
            "heatmap": {
                "stride": 4,
                "decoder_channels": [8, 8, 8],
                "heatmap_loss": "l2",
                "coord_weight": 0.01,
                "decoder": "local_soft_argmax",
            },
        },
        "train": {"batch_size": 4, "report_images": 2},
        "tta": {"hflip": False},
    }
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    comp = build_competition(base / "comp", n_train=6, n_test=2, n_points=20, size=(48, 48))
    write_folds(Competition.load(comp.root).folds_csv, make_folds(comp.train_names, k=2, seed=0))
    fold_train(pipeline_from_dict(TINY_HEATMAP), comp.root, out_dir=base / "runs")
    return base / "runs" / "hm", comp.root


def _digest(run_dir):
    return {p.name: file_sha256(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_same_settings_reproduce_the_source_predictions(finished_run):
    run_dir, data = finished_run
    result = repredict(run_dir, data, name="hm-again")
    np.testing.assert_allclose(np.load(result.run_dir / "oof.npy"), np.load(run_dir / "oof.npy"), atol=1e-4)
    np.testing.assert_allclose(np.load(result.run_dir / "test.npy"), np.load(run_dir / "test.npy"), atol=1e-4)
    assert result.metrics.oof_mse == pytest.approx(result.source_oof_mse, rel=1e-4)
    # real fold records: the source fold's training figures, the new MSE, the source named in the lineage
    source, again = RunDir(run_dir), RunDir(result.run_dir)
    for fold in range(2):
        old, new = source.read_fold(fold), again.read_fold(fold)
        assert new.history == old.history and new.best_epoch == old.best_epoch >= 0
        assert new.source == str(run_dir.resolve()) and new.source_mse == old.mse
        assert new.mse == pytest.approx(old.mse, rel=1e-4)
        assert new.nme == pytest.approx(old.nme, rel=1e-4) and new.nme > 0
    assert result.metrics.oof_nme == pytest.approx(load_run(run_dir).metrics.oof_nme, rel=1e-4)
    assert result.metrics.lineage == (str(run_dir.resolve()),)


def test_cli_writes_a_new_blendable_run_with_tta_and_decoder(finished_run):
    run_dir, data = finished_run
    before = _digest(run_dir)
    result = CliRunner().invoke(
        app, ["predict", str(run_dir), "--data", str(data), "--tta", "hflip", "--decoder", "dark"]
    )
    assert result.exit_code == 0, result.output
    assert "OOF MSE" in result.output and "NME" in result.output
    new = run_dir.parent / "hm-hflip-dark"
    run = load_run(new)  # the run contract: oof.npy, test.npy, metrics.json with split
    truth = Competition.load(data).train.points
    assert run.oof_mse == pytest.approx(mse(run.oof, truth), rel=1e-6)
    assert json.loads((new / "split.json").read_text()) == json.loads((run_dir / "split.json").read_text())
    assert run.split == load_run(run_dir).split
    pipeline = yaml.safe_load((new / "pipeline.yaml").read_text())
    assert pipeline["name"] == "hm-hflip-dark" and pipeline["tta"]["hflip"] is True
    assert pipeline["model"]["heatmap"]["decoder"] == "dark"
    assert run.metrics.lineage == (str(run_dir.resolve()),)
    assert _digest(run_dir) == before  # the source run is untouched


def test_refuses_to_overwrite_the_source_or_an_existing_run(finished_run):
    run_dir, data = finished_run
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--data", str(data), "--name", "hm"])
    assert result.exit_code == 1 and "never overwritten" in result.output
    (run_dir.parent / "taken").mkdir()
    with pytest.raises(KitError, match="exists"):
        repredict(run_dir, data, name="taken")
    with pytest.raises(KitError, match=r"--name '\.\./up'"):
        repredict(run_dir, data, name="../up")
    with pytest.raises(KitError, match="not a kit run"):
        repredict(run_dir, data, name="taken", force=True)  # --force replaces runs only, never other folders


def test_refuses_other_folds_and_decoders_for_regression(finished_run, tmp_path):
    run_dir, data = finished_run
    other = tmp_path / "other"
    shutil.copytree(data, other)
    comp = Competition.load(other)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=1))
    with pytest.raises(KitError, match="other data or folds"):
        repredict(run_dir, other)
    regression = tmp_path / "reg"
    shutil.copytree(run_dir, regression)
    tree = yaml.safe_load((regression / "pipeline.yaml").read_text())
    tree["model"]["family"] = "regression"
    (regression / "pipeline.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(KitError, match="--decoder"):
        repredict(regression, data, decoder="dark")


def _decoder_literals(config: type) -> set[str]:
    """The choices of every ``decoder`` field in a config class and its subsections."""
    found = set()
    for name, field in config.model_fields.items():
        if name == "decoder" and typing.get_origin(field.annotation) is typing.Literal:
            found |= set(typing.get_args(field.annotation))
        elif isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            found |= _decoder_literals(field.annotation)
    return found


def test_cli_decoder_choices_are_every_familys_decoders():
    from kit.cli.predict import DecoderChoice
    from kit.codecs import DECODERS
    from kit.models._registry import family_config, list_families

    choices = set().union(*(_decoder_literals(family_config(family)) for family in list_families()))
    assert set(DECODERS) < choices and "torchvision" in choices
    assert {d.value for d in DecoderChoice} == choices


def test_force_replaces_a_run_only_once_the_new_one_is_complete(finished_run, monkeypatch):
    run_dir, data = finished_run
    first = repredict(run_dir, data, name="hm-replaced")
    before = _digest(first.run_dir)

    def broken(*args, **kwargs):
        raise KitError("simulated failure in the middle of prediction")

    monkeypatch.setattr("kit.predict.repredict.predict_original", broken)
    with pytest.raises(KitError, match="simulated failure"):
        repredict(run_dir, data, name="hm-replaced", tta="hflip", force=True)
    assert _digest(first.run_dir) == before  # the old run is intact
    assert [p.name for p in run_dir.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    monkeypatch.undo()
    again = repredict(run_dir, data, name="hm-replaced", tta="hflip", force=True)
    assert load_run(again.run_dir).metrics.tta == {"hflip": True}


@pytest.mark.parametrize("flip", [False, True])
def test_predict_original_fills_batch_by_batch_what_whole_array_mapping_gives(make_competition, flip):
    import torch

    from kit.data.dataset import CropDataset
    from kit.data.prepare import prepare_crops
    from kit.models import create_model
    from kit.predict.tta import inference_loader, predict_original, predict_points

    comp = Competition.load(make_competition(n_train=7, n_test=2, n_points=20, size=(48, 40)).root)
    cache = prepare_crops(comp, "train", 32, 0.0, 4)
    model = create_model(pipeline_from_dict({**TINY_HEATMAP, "model": {"backbone": "test_resnet"}}), 20)
    perm = np.arange(20)[::-1].copy() if flip else None
    rows = np.array([6, 0, 3, 4, 1])
    device = torch.device("cpu")
    whole = predict_points(model, inference_loader(CropDataset(cache, rows), 2, device), device, False, False, perm)
    assert whole.shape == (5, 20, 2) and whole.dtype == np.float32
    batched = predict_original(model, cache, rows, device, 2, False, False, perm)
    np.testing.assert_array_equal(batched, cache.to_original(whole, rows))
