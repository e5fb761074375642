from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.config import Pipeline, PretrainedConfig, apply_overrides, dump_pipeline, load_pipeline, pipeline_from_dict
from kit.errors import KitError
from kit.models import create_model, family_config, list_families
from kit.models.heatmap import HeatmapModelConfig
from kit.models.regression import RegressionConfig

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))
# One non-default model section per family, with a family-specific field set.
FAMILY_SECTIONS = {
    "regression": {"family": "regression", "backbone": "test_resnet", "drop_rate": 0.2},
    "heatmap": {
        "family": "heatmap",
        "backbone": "tu-test_resnet",
        "heatmap": {"stride": 2, "decoder": "dark", "arch_kwargs": {"decoder_attention_type": "scse"}},
    },
    "simcc": {"family": "simcc", "backbone": "test_resnet", "simcc": {"split_ratio": 3.0, "sigma": 1.5}},
    "keypoint_rcnn": {"family": "keypoint_rcnn", "backbone": "tu-test_resnet", "keypoint_rcnn": {"roi_size": 6}},
}


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
    assert isinstance(pipeline.model, RegressionConfig)  # omitted family: regression
    assert Pipeline.model_validate(yaml.safe_load(dump_pipeline(pipeline))) == pipeline


def test_every_family_has_a_round_trip_section():
    assert sorted(FAMILY_SECTIONS) == list_families()


@pytest.mark.parametrize("family", sorted(FAMILY_SECTIONS))
def test_family_section_is_its_class_and_round_trips(family):
    pipeline = pipeline_from_dict({"name": "x", "model": FAMILY_SECTIONS[family]})
    assert type(pipeline.model) is family_config(family)
    tree = pipeline.model_dump(mode="json")
    specific = set(FAMILY_SECTIONS[family]) - {"family", "backbone"}
    assert specific <= set(tree["model"]) and tree["model"]["family"] == family
    assert pipeline_from_dict(tree) == pipeline
    assert Pipeline.model_validate(yaml.safe_load(dump_pipeline(pipeline))) == pipeline
    # The model_copy pattern of kit.predict keeps the family's class and fields.
    bare = pipeline.model_copy(update={"model": pipeline.model.model_copy(update={"pretrained": PretrainedConfig()})})
    assert type(bare.model) is type(pipeline.model) and bare.model_dump(mode="json") == tree


def test_instance_of_a_family_class_is_accepted():
    pipeline = Pipeline(name="x", model=HeatmapModelConfig(backbone="tu-test_resnet"))
    assert pipeline.model.family == "heatmap" and pipeline.model.heatmap.stride == 4


def test_unknown_family_lists_the_registered_ones(tmp_path):
    choices = ", ".join(list_families())
    assert {"heatmap", "regression"} <= set(list_families())
    with pytest.raises(KitError) as error:
        pipeline_from_dict({"name": "x", "model": {"family": "foo"}}, "cfg")
    assert str(error.value) == f"cfg: key 'model.family': unknown model family 'foo' (choose from {choices})"
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmodel: {family: regression}\n")
    with pytest.raises(KitError) as error:
        load_pipeline(path, ["model.family=foo"])
    assert str(error.value) == f"{path}: key 'model.family': unknown model family 'foo' (choose from {choices})"


def test_a_registered_section_is_validated_by_its_family(monkeypatch):
    import kit.config as config

    class ToyConfig(config.ModelConfig):
        family: str = "toy"
        depth: int = 2

    monkeypatch.setattr(config, "_FAMILY_CONFIGS", dict(config._FAMILY_CONFIGS))
    assert config.register_family_config(ToyConfig) is ToyConfig and "toy" in config.list_families()
    pipeline = pipeline_from_dict({"name": "x", "model": {"family": "toy", "depth": 3}})
    assert type(pipeline.model) is ToyConfig and pipeline.model.depth == 3
    with pytest.raises(KitError, match=r"^cfg: unknown key 'model\.width'$"):
        pipeline_from_dict({"name": "x", "model": {"family": "toy", "width": 3}}, "cfg")


def test_validating_with_no_family_registered_is_a_programming_error(monkeypatch):
    monkeypatch.setattr("kit.config._FAMILY_CONFIGS", {})
    with pytest.raises(RuntimeError, match="import kit.models"):
        pipeline_from_dict({"name": "x"})


@pytest.mark.parametrize(
    "model, key",
    [
        ({"heatmap": {"stride": 2}}, "model.heatmap"),  # omitted family: regression
        ({"family": "regression", "heatmap": {}}, "model.heatmap"),
        ({"family": "heatmap", "drop_rate": 0.1}, "model.drop_rate"),
        ({"family": "heatmap", "heatmap": {"strid": 2}}, "model.heatmap.strid"),
    ],
)
def test_key_of_another_family_is_unknown(model, key):
    with pytest.raises(KitError) as error:
        pipeline_from_dict({"name": "x", "model": model}, "cfg")
    assert str(error.value) == f"cfg: unknown key '{key}'"


def test_heatmap_overrides_keep_their_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmodel: {family: heatmap, backbone: tu-resnet34, heatmap: {stride: 4}}\n")
    pipeline = load_pipeline(path, ["model.heatmap.stride=2", "model.heatmap.decoder=dark"])
    assert pipeline.model.heatmap.stride == 2 and pipeline.model.decoder == "dark"
    with pytest.raises(KitError, match=r"key 'model\.heatmap\.stride'"):
        load_pipeline(path, ["model.heatmap.stride=3"])


N_POINTS = 10


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_build_and_decode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))  # package weights: converted offline into an empty cache
    pipeline = load_pipeline(path)
    if pipeline.model.pretrained.source == "hub":  # no network here
        pipeline = load_pipeline(path, ["model.pretrained.source=none"])
    torch.manual_seed(0)
    model = create_model(pipeline, N_POINTS).eval()
    size = pipeline.input.size
    with torch.no_grad():
        points = model.decode(model(torch.randn(1, 3, size, size)))
    assert points.shape == (1, N_POINTS, 2) and torch.isfinite(points).all()


def test_cli_bad_pipeline_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {backbone: resnet18, colour: red}\n")
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["fold-train", str(bad), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "unknown key 'model.colour'" in result.output
