from typing import Literal

import huggingface_hub.constants
import huggingface_hub.errors
import pytest
import timm
import torch
from safetensors.torch import save_file

from kit import config
from kit.config import ModelConfig, Pipeline, pipeline_from_dict
from kit.errors import KitError
from kit.models import _registry, create_model, family_config, list_families, register_family
from kit.models.regression import from_normalised, to_normalised
from kit.models.weights import import_package_weights


def _pipeline(**model):
    return Pipeline.model_validate({"name": "t", "model": {"backbone": "test_resnet", **model}, "input": {"size": 32}})


def test_regression_outputs_points_and_starts_at_mean_shape():
    model = create_model(_pipeline(), n_points=7)
    mean = torch.rand(7, 2) * 31
    model.set_mean_shape(mean)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7, 2)
    torch.testing.assert_close(model.decode(out), mean.expand(3, 7, 2), atol=1e-4, rtol=0)


def test_normalised_coordinates_round_trip_and_span_the_edges():
    points = torch.rand(10, 2) * 64 - 0.5
    torch.testing.assert_close(from_normalised(to_normalised(points, 64), 64), points)
    assert to_normalised(torch.tensor([-0.5, 63.5]), 64).tolist() == [-1.0, 1.0]


def test_unknown_backbone_name():
    with pytest.raises(KitError, match="unknown timm model 'no_such_net'"):
        create_model(_pipeline(backbone="no_such_net"), n_points=3)


class _FakeConfig(ModelConfig):
    family: Literal["fake"] = "fake"
    width: int = 4  # a field of this family only


def test_a_registered_family_validates_builds_and_unregistered_is_refused(monkeypatch):
    monkeypatch.setattr(_registry, "_FACTORIES", dict(_registry._FACTORIES))
    monkeypatch.setattr(config, "_FAMILY_CONFIGS", dict(config._FAMILY_CONFIGS))
    built = []
    register_family("fake", config=_FakeConfig)(lambda pipeline, n_points: built.append(pipeline) or "model")
    assert family_config("fake") is _FakeConfig and "fake" in list_families()
    pipeline = pipeline_from_dict({"name": "t", "model": {"family": "fake", "width": 8}})
    assert isinstance(pipeline.model, _FakeConfig) and pipeline.model.width == 8
    assert create_model(pipeline, n_points=3) == "model" and built == [pipeline]
    del _registry._FACTORIES["fake"]
    choices = ", ".join(list_families())
    assert "heatmap" in choices and "regression" in choices
    with pytest.raises(KitError, match=rf"^unknown model family 'fake' \(choose from {choices}\)$"):
        create_model(pipeline, n_points=3)


def test_family_registration_needs_its_config_class():
    with pytest.raises(TypeError, match="family defaulting to 'other'"):
        register_family("other", config=_FakeConfig)


def test_pretrained_file_drops_classifier_and_loads(tmp_path):
    reference = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = create_model(_pipeline(pretrained={"source": "file", "path": str(path)}), n_points=3)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key])


def test_pretrained_file_shape_mismatch_names_tensor(tmp_path):
    state = timm.create_model("test_resnet", num_classes=0).state_dict()
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(KitError, match=f"shape mismatch .*{key}"):
        create_model(_pipeline(pretrained={"source": "file", "path": str(path)}), n_points=3)


def test_missing_checkpoint_file():
    with pytest.raises(KitError, match="not found"):
        create_model(_pipeline(pretrained={"source": "file", "path": "/nonexistent.pth"}), n_points=3)


def test_hub_offline_gives_clear_error(monkeypatch, tmp_path):
    # huggingface_hub reads its environment once, at import: set its module constants as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(KitError, match="cannot load pretrained 'resnet18' from the hub.*source=file") as error:
        create_model(_pipeline(backbone="resnet18", pretrained={"source": "hub"}), n_points=3)
    assert isinstance(error.value.__context__, huggingface_hub.errors.LocalEntryNotFoundError)  # the real hub path


def test_package_weights_import_and_load(monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))
    path = import_package_weights("efficientnet-lite0")
    assert path.is_file() and path.parent == tmp_path / "weights"
    model = create_model(
        _pipeline(backbone="tf_efficientnet_lite0", pretrained={"source": "package", "package": "efficientnet-lite0"}),
        n_points=3,
    )
    # Real ImageNet weights: BatchNorm running statistics are not the defaults of a fresh model.
    assert not torch.allclose(model.backbone.bn1.running_var, torch.ones_like(model.backbone.bn1.running_var))
    assert model.mean == (0.5, 0.5, 0.5)


def test_package_must_match_backbone():
    with pytest.raises(KitError, match="holds tf_efficientnet_lite0 weights"):
        create_model(_pipeline(pretrained={"source": "package", "package": "efficientnet-lite0"}), n_points=3)
