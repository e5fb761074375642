"""The parts of a bundle that need no training: the manifest and its check (in kit and in ``predict.py``), the Kaggle
metadata, the licence note, the fold weights' file format, and the command's one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_helpers import DATASET, fake_bundle
from typer.testing import CliRunner

from kit.bundle import script
from kit.bundle.licences import weights_licence
from kit.bundle.manifest import BundleError, open_bundle, read_manifest, verify_files
from kit.bundle.metadata import check_dataset, default_dataset, kernel_metadata
from kit.bundle.predict import main as predict_main
from kit.bundle.weights import build_model, read_weights, save_weights
from kit.cli import app
from kit.config import pipeline_from_dict
from kit.errors import KitError

TINY = {"name": "tiny", "model": {"backbone": "test_resnet"}, "input": {"size": 32}}


@pytest.fixture
def bundle(tmp_path):
    return fake_bundle(tmp_path / "bundle")


def test_manifest_lists_every_file_but_itself_and_the_kaggle_metadata(bundle):
    manifest = read_manifest(bundle)
    assert "runs/alpha/fold0.safetensors" in manifest.files and "predict.py" in manifest.files
    assert not {"manifest.json", "dataset-metadata.json", "kernel-metadata.json"} & set(manifest.files)
    assert open_bundle(bundle) == manifest


@pytest.mark.parametrize("damage", ["changed", "same size", "missing"])
def test_a_changed_or_missing_file_is_named(bundle, damage):
    path = bundle / "runs" / "alpha" / "fold0.safetensors"
    if damage == "missing":
        path.unlink()
        says = "missing (listed in manifest.json); the bundle is incomplete"
    else:
        data = bytearray(path.read_bytes())
        data[7] ^= 0xFF
        path.write_bytes(bytes(data) + (b"" if damage == "same size" else b"!"))
        says = "checksum mismatch with manifest.json; the file was changed or damaged"
    with pytest.raises(BundleError, match=f"^{path}: {says.replace('(', '.').replace(')', '.')}"):
        verify_files(bundle, read_manifest(bundle))
    with pytest.raises(SystemExit) as stopped:  # predict.py's own check, before kit is installed
        script.verify(bundle)
    assert str(stopped.value) == f"error: {path}: {says}"


def test_not_a_bundle_is_one_line(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing \\(not a kit bundle\\?\\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "kit-bundle"}')
    with pytest.raises(BundleError, match="manifest.json: not a kit bundle manifest \\(key '"):
        read_manifest(tmp_path)
    with pytest.raises(SystemExit, match="not a readable kit bundle manifest"):
        (tmp_path / "manifest.json").write_text("{")
        script.verify(tmp_path)


def test_dataset_names_and_kernel_metadata(monkeypatch):
    assert check_dataset(DATASET) == ("kit-tester", "kit-tiny-bundle")
    for bad in ("a", "me/abc", "me/Has_Caps", "me/" + "x" * 51, "a/b/c"):
        with pytest.raises(KitError, match=f"--dataset '{bad}'"):
            check_dataset(bad)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert default_dataset("demo_stack") == "someone/kit-demo-stack"
    assert default_dataset("s") == "someone/kit-s-bundle"
    monkeypatch.delenv("KAGGLE_USERNAME")
    assert default_dataset("Run 7") == "USERNAME/kit-run-7"
    kernel = kernel_metadata(DATASET, "made-thousand-facial-landmarks")
    assert kernel["enable_internet"] == "false" and kernel["kernel_type"] == "script"
    assert kernel["dataset_sources"] == [DATASET] and kernel["competition_sources"] == [
        "made-thousand-facial-landmarks"
    ]


def test_licence_note_names_where_the_weights_came_from():
    def licence(pretrained: dict):
        return weights_licence("r", pipeline_from_dict(TINY | {"model": TINY["model"] | {"pretrained": pretrained}}))

    assert licence({"source": "none"}).licence == "none"
    assert licence({"source": "hub"}).licence == "apache-2.0"  # timm's pretrained config, read offline
    package = licence({"source": "package", "package": "efficientnet-lite0"})
    assert package.licence == "Apache-2.0" and "tf_efficientnet_lite0" in package.note
    local = licence({"source": "file", "path": "/weights/mine.pth"})
    assert local.licence.startswith("unknown") and "/weights/mine.pth" in local.note


def test_weights_round_trip_and_half_precision(tmp_path):
    pipeline = pipeline_from_dict(TINY)
    model = build_model(pipeline, build_model_state(pipeline), 5, torch.device("cpu"), "initial")
    state = model.state_dict()
    save_weights(tmp_path / "full.safetensors", state)
    save_weights(tmp_path / "half.safetensors", state, "float16")
    full, half = read_weights(tmp_path / "full.safetensors"), read_weights(tmp_path / "half.safetensors")
    assert all(torch.equal(full[k], state[k]) for k in state)
    assert {t.dtype for t in half.values() if t.is_floating_point()} == {torch.float16}
    loaded = build_model(pipeline, half, 5, torch.device("cpu"), "half").state_dict()
    assert all(loaded[k].dtype == state[k].dtype for k in state)  # upcast into the model's own precision
    with pytest.raises(KitError, match="big.safetensors: weight 'w' exceeds the float16 range; store bfloat16"):
        save_weights(tmp_path / "big.safetensors", {"w": torch.tensor([1e6])}, "float16")
    with pytest.raises(KitError, match="other: does not fit the run's pipeline"):
        build_model(pipeline, full, 7, torch.device("cpu"), "other")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(KitError, match="bad.safetensors: not readable safetensors"):
        read_weights(tmp_path / "bad.safetensors")


def build_model_state(pipeline) -> dict:
    from kit.models import create_model

    return create_model(pipeline, 5).state_dict()


def test_predict_without_a_competition_is_one_line(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert predict_main(bundle, []) == 1  # not in a Kaggle notebook: no /kaggle/input competition
    assert capsys.readouterr().err.strip().endswith("with test/test_points.csv; give --data or --images")


@pytest.mark.parametrize(
    ("source", "says"),
    [("folder", "metrics.json: missing"), ("x.txt", "expected a finished run folder or a blend's or stack's")],
)
def test_bundle_command_refuses_a_bad_source_in_one_line(tmp_path, source, says):
    path = tmp_path / source
    path.mkdir() if source == "folder" else path.write_text("x")
    result = CliRunner().invoke(app, ["bundle", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and says in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_kernel_metadata_written_by_a_bundle_is_valid_json(bundle):
    kernel = json.loads((bundle / "kernel-metadata.json").read_text())
    assert kernel["code_file"] == "predict.py" and (bundle / kernel["code_file"]).is_file()
