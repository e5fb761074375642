from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.config import Pipeline, apply_overrides, dump_pipeline, load_pipeline, pipeline_from_dict
from kit.errors import KitError

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    pipeline = load_pipeline(path)
    assert pipeline.name == path.stem


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {epochs: 2, bach_size: 8}\n")
    with pytest.raises(KitError, match=r"bad\.yaml: unknown key 'train\.bach_size'"):
        load_pipeline(bad)


def test_wrong_type_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptim: {lr: fast}\n")
    with pytest.raises(KitError, match=r"bad\.yaml: key 'optim\.lr'"):
        load_pipeline(bad)


def test_invalid_choice_is_named():
    with pytest.raises(KitError, match="key 'loss.name'"):
        pipeline_from_dict({"name": "x", "loss": {"name": "huber"}}, "cfg")


def test_pretrained_file_needs_path():
    with pytest.raises(KitError, match="model.pretrained"):
        pipeline_from_dict({"name": "x", "model": {"pretrained": {"source": "file"}}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n")
    pipeline = load_pipeline(path, ["optim.lr=3e-4", "train.amp=false", "tta.hflip=true", "input.size=96"])
    assert pipeline.optim.lr == pytest.approx(3e-4)
    assert pipeline.train.amp is False and pipeline.tta.hflip is True and pipeline.input.size == 96


def test_override_of_unknown_key_fails(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n")
    with pytest.raises(KitError, match="unknown key 'train.nope'"):
        load_pipeline(path, ["train.nope=1"])
    with pytest.raises(KitError, match="expected section.key=value"):
        apply_overrides({}, ["train.epochs"])


def test_dump_round_trips():
    pipeline = Pipeline(name="x")
    import yaml

    assert Pipeline.model_validate(yaml.safe_load(dump_pipeline(pipeline))) == pipeline


def test_cli_bad_pipeline_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {backbone: resnet18, colour: red}\n")
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["fold-train", str(bad), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "unknown key 'model.colour'" in result.output
