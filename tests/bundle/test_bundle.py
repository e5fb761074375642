"""``kit bundle``: tiny trained runs and a stack bundled, predicted in process and, as the proof, by ``predict.py`` in a
fresh virtual environment that sees this one's third-party packages but not kit, with every socket refused: the
predictions are ``kit infer``'s within 1e-3 px."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bundle_helpers import kaggle_fixture as _kaggle  # noqa: F401  (the kaggle fixture)
from kaggle_server import FakeKaggle
from tiny import build_competition, tiny_pipeline
from typer.testing import CliRunner

import kit
from kit.bundle.build import build_bundle
from kit.bundle.manifest import MANIFEST_FILE, BundleError, read_manifest, verify_files
from kit.bundle.predict import run
from kit.bundle.upload import upload_bundle
from kit.cli import app
from kit.config import pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.ensemble.blend import blend_runs
from kit.ensemble.stack import stack_runs
from kit.errors import KitError
from kit.io import file_sha256
from kit.predict.infer import infer
from kit.runs import load_run
from kit.submit.format import select_requested
from kit.train import fold_train

pytestmark = pytest.mark.slow  # trains models, builds wheels and virtual environments

TINY = tiny_pipeline(
    {"model": {"pretrained": {"source": "none"}}, "input": {"margin": 0.1}, "train": {"batch_size": 4}}
)
DATASET = "kit-tester/tiny-flip-bundle"
COMPETITION = "made-thousand-facial-landmarks"


@dataclass(frozen=True)
class Trained:
    data: Path
    flip: Path  # a run with flip TTA
    plain: Path
    stack: Path  # a ridge stack of the two: NAME.json
    blend: Path  # their weights blend: NAME.json

    @property
    def images(self) -> Path:
        return self.data / "test" / "images"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("bundle")
    comp = build_competition(base / "comp", n_train=8, n_test=5, n_points=20, size=(44, 52))
    write_folds(Competition.load(comp.root).folds_csv, make_folds(comp.train_names, k=2, seed=0))
    runs = base / "runs"
    fold_train(pipeline_from_dict(TINY | {"name": "flip", "tta": {"hflip": True}}), comp.root, out_dir=runs)
    plain = TINY | {"name": "plain", "train": TINY["train"] | {"seed": 1}}
    fold_train(pipeline_from_dict(plain), comp.root, out_dir=runs)
    members = [runs / "flip", runs / "plain"]
    stack = stack_runs(members, comp.root, model="ridge", name="tiny-stack", out_dir=base / "s")
    blend = blend_runs(members, comp.root, method="weights", name="tiny-blend", out_dir=base / "s")
    return Trained(comp.root, runs / "flip", runs / "plain", stack.json, blend.json)


@pytest.fixture(scope="module")
def run_bundle(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "flip-bundle"
    build_bundle(trained.flip, out, dataset=DATASET, competition=COMPETITION)
    return out


def extra_wheel(folder: Path) -> Path:
    """A wheel of a one-module package, ``kit_extra_dep``, built offline: a dependency the target image lacks."""
    source = folder / "src"
    (source / "kit_extra_dep").mkdir(parents=True)
    (source / "kit_extra_dep" / "__init__.py").write_text("VALUE = 42\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "kit-extra-dep"\nversion = "0.1"\n'
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*command, "-w", str(folder / "wheels"), str(source)], check=True, cwd=folder, timeout=300)
    return folder / "wheels"


@pytest.fixture(scope="module")
def stack_bundle(trained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("built")
    build_bundle(trained.stack, folder / "stack-bundle", competition=COMPETITION, wheels=extra_wheel(folder))
    return folder / "stack-bundle"


def _table(csv: Path, sep: str = "\t") -> tuple[list[str], np.ndarray]:
    table = pd.read_csv(csv, sep=sep)
    points = table.drop(columns="file_name").to_numpy(np.float64)
    return table["file_name"].tolist(), points.reshape(len(table), -1, 2)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- what a bundle holds


def test_run_bundle_holds_only_what_inference_needs(run_bundle, trained):
    assert _files(run_bundle) == {
        "manifest.json",
        "predict.py",
        "WEIGHTS_LICENCE.md",
        "dataset-metadata.json",
        "kernel-metadata.json",
        "runs/flip/pipeline.yaml",
        "runs/flip/flip_permutation.txt",
        "runs/flip/fold0.safetensors",
        "runs/flip/fold1.safetensors",
        f"wheels/kit-{kit.__version__}-py3-none-any.whl",
    }
    manifest = read_manifest(run_bundle)
    verify_files(run_bundle, manifest)
    assert set(manifest.files) == _files(run_bundle) - {MANIFEST_FILE, "dataset-metadata.json", "kernel-metadata.json"}
    for rel, entry in manifest.files.items():
        assert entry.sha256 == file_sha256(run_bundle / rel) and entry.size == (run_bundle / rel).stat().st_size
    assert (run_bundle / "runs/flip/pipeline.yaml").read_bytes() == (trained.flip / "pipeline.yaml").read_bytes()
    assert manifest.kind == "run" and manifest.kit_version == kit.__version__ and manifest.weights_dtype == "float32"
    assert [f.fold for f in manifest.runs[0].folds] == [0, 1] and manifest.runs[0].n_points == 20
    from importlib.metadata import version

    assert manifest.assumes["torch"] == version("torch") and manifest.assumes["timm"] == version("timm")
    assert manifest.modules["cv2"] == "opencv-python-headless"
    with zipfile.ZipFile(run_bundle / manifest.kit_wheel) as wheel:
        assert "kit/bundle/predict.py" in wheel.namelist()
    assert manifest.licences[0].source == "none"
    assert "trained from scratch" in (run_bundle / "WEIGHTS_LICENCE.md").read_text()


def test_kaggle_metadata_turns_the_internet_off(run_bundle):
    kernel = json.loads((run_bundle / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] == "false" and kernel["code_file"] == "predict.py"
    assert kernel["dataset_sources"] == [DATASET] and kernel["competition_sources"] == [COMPETITION]
    assert kernel["id"] == f"{DATASET}-predict" and kernel["title"] == "tiny-flip-bundle-predict"
    dataset = json.loads((run_bundle / "dataset-metadata.json").read_text())
    assert dataset["id"] == DATASET and dataset["licenses"] == [{"name": "other"}]


def test_a_built_bundle_uploads_every_file(run_bundle, kaggle: FakeKaggle):
    done = upload_bundle(run_bundle, DATASET)
    assert done.new and done.entries == 5  # manifest.json, predict.py, WEIGHTS_LICENCE.md, runs/, wheels/
    metadata = {"dataset-metadata.json", "kernel-metadata.json"}
    expected = {rel: (run_bundle / rel).read_bytes() for rel in _files(run_bundle) - metadata}
    assert kaggle.dataset_files(DATASET) == expected


# ---------------------------------------------------------------- predictions in process


def test_run_bundle_predicts_as_kit_infer(run_bundle, trained, tmp_path):
    expected = infer(trained.flip, trained.images, tmp_path / "infer.csv")
    lines = []
    result = run(run_bundle, images=trained.images, out=tmp_path / "bundle.csv", log=lines.append)
    names, points = _table(result.out)
    assert names == expected.file_names
    np.testing.assert_allclose(points, expected.points, atol=1e-3)
    assert any(line.startswith("first batch: 5 images in") and "for 5 images x 2 fold models" in line for line in lines)


def test_run_bundle_submission_is_the_runs_test_predictions(run_bundle, trained, tmp_path):
    result = run(run_bundle, data=trained.data, out=tmp_path / "submission.csv", batch_size=2)
    test = Competition(trained.data).test
    expected = select_requested(np.asarray(load_run(trained.flip).test), test)
    names, points = _table(result.out, sep=",")
    assert names == test.file_names.tolist()
    np.testing.assert_allclose(points, expected, atol=1e-3)


def test_stack_bundle_reproduces_kit_infer_and_the_stack(stack_bundle, trained, tmp_path):
    manifest = read_manifest(stack_bundle)
    assert manifest.kind == "stack" and [r.name for r in manifest.runs] == ["flip", "plain"]
    assert {"ensemble/tiny-stack.json", "ensemble/tiny-stack.npz"} <= set(manifest.files)
    assert manifest.wheels == ("wheels/kit_extra_dep-0.1-py3-none-any.whl",)
    assert "runs/plain/flip_permutation.txt" not in manifest.files  # no flip TTA: not needed
    expected = infer(trained.stack, trained.images, tmp_path / "infer.csv")
    names, points = _table(run(stack_bundle, images=trained.images, out=tmp_path / "bundle.csv").out)
    assert names == expected.file_names
    np.testing.assert_allclose(points, expected.points, atol=1e-3)
    submission = run(stack_bundle, data=trained.data, out=tmp_path / "submission.csv").out
    np.testing.assert_allclose(_table(submission, ",")[1], _table(trained.stack.with_suffix(".csv"), ",")[1], atol=1e-3)


def test_blend_bundle_reproduces_kit_infer(trained, tmp_path):
    built = build_bundle(trained.blend, tmp_path / "blend-bundle", dataset=DATASET)
    assert built.manifest.kind == "blend" and built.manifest.ensemble == "ensemble/tiny-blend.json"
    expected = infer(trained.blend, trained.images, tmp_path / "infer.csv")
    result = run(built.out, images=trained.images, out=tmp_path / "bundle.csv")
    np.testing.assert_allclose(result.points, expected.points, atol=1e-3)


# ---------------------------------------------------------------- a damaged bundle stops, naming the file


def _copy_of(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _predict_script(bundle: Path, *args: str, python: str = sys.executable, env=None):
    """``predict.py`` run from a neutral folder (``python -c`` would put the working folder, here the checkout,
    on the path)."""
    command = [python, str(bundle / "predict.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=bundle.parent)


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_changed_or_missing_file_stops_predict_with_one_line(run_bundle, trained, tmp_path, damage):
    bundle = _copy_of(run_bundle, tmp_path)
    weights = bundle / "runs" / "flip" / "fold1.safetensors"
    if damage == "changed":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        says = f"{weights}: checksum mismatch with manifest.json"
    else:
        weights.unlink()
        says = f"{weights}: missing (listed in manifest.json)"
    done = _predict_script(bundle, "--images", str(trained.images), "--out", str(tmp_path / "out.csv"))
    assert done.returncode == 1 and done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(BundleError, match=says.replace("(", r"\(").replace(")", r"\)")):
        run(bundle, images=trained.images, out=tmp_path / "in-process.csv")


# ---------------------------------------------------------------- outputs, half precision, the command


def test_an_existing_out_is_refused_unless_force_and_only_a_bundle_is_replaced(run_bundle, trained, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(KitError, match="exists \\(choose another --out, or --force"):
        build_bundle(trained.flip, out, dataset=DATASET)
    with pytest.raises(KitError, match="exists and is not a kit bundle; not replacing it"):
        build_bundle(trained.flip, out, dataset=DATASET, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(KitError, match="inside the run folder"):
        build_bundle(trained.flip, trained.flip / "bundle", dataset=DATASET)
    replaced = _copy_of(run_bundle, tmp_path)
    (replaced / "stale.txt").write_text("old")
    built = build_bundle(trained.flip, replaced, dataset=DATASET, force=True)
    assert not (replaced / "stale.txt").exists() and built.manifest == read_manifest(replaced)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "copy"]  # no staging folder left


def test_half_precision_halves_the_weights_and_reports_the_change(run_bundle, trained, tmp_path):
    built = build_bundle(trained.flip, tmp_path / "half", half="fp16", dataset=DATASET, data=trained.data)
    manifest = built.manifest
    assert manifest.weights_dtype == "float16"
    full = read_manifest(run_bundle).files["runs/flip/fold0.safetensors"].size
    assert manifest.files["runs/flip/fold0.safetensors"].size < 0.6 * full
    measured = built.measured
    assert measured is not None and measured.images == 5 and measured.images_per_second > 0
    assert measured.half_max_change_px is not None and measured.half_max_change_px < 0.1
    result = run(tmp_path / "half", images=trained.images, out=tmp_path / "half.csv")
    reference = run(run_bundle, images=trained.images, out=tmp_path / "full.csv")
    change = np.abs(result.points - reference.points).max()
    assert change == pytest.approx(measured.half_max_change_px, abs=1e-6)


def test_command_reports_size_and_speed(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "cli-bundle"
    args = ["bundle", str(trained.flip), "--out", str(out), "--data", str(trained.data), "--measure", "3"]
    result = CliRunner().invoke(app, [*args, "--dataset", DATASET])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: run of 1 run(s), 2 fold models (float32)" in result.stdout and " MB" in result.stdout
    assert "predict: 3 images in" in result.stdout and "images/s on cpu" in result.stdout
    again = CliRunner().invoke(app, [*args, "--dataset", DATASET])
    assert again.exit_code == 1 and "exists (choose another --out, or --force" in again.stderr


# ---------------------------------------------------------------- the proof: offline, in a fresh environment

NO_NETWORK = '''"""Written by the offline bundle test: every connection and name lookup raises, and is recorded."""
import os
import socket


def _refuse(what):
    def refused(*args, **kwargs):
        with open(os.environ["KIT_TEST_SOCKET_LOG"], "a") as log:
            log.write(f"{what} {args!r}\\n")
        raise OSError(f"network disabled by the offline test ({what})")

    return refused


if os.environ.get("KIT_TEST_SOCKET_LOG"):
    socket.socket.connect = _refuse("connect")
    socket.socket.connect_ex = _refuse("connect_ex")
    socket.create_connection = _refuse("create_connection")
    socket.getaddrinfo = _refuse("getaddrinfo")
'''
_NOT_SHARED = ("__editable__", "kit-", "kit.", "pip", "setuptools", "_distutils_hack", "pkg_resources")


def _shared(entry: Path) -> bool:
    """Whether a site-packages entry of this environment is shown to the fresh one: third-party packages, not kit
    (its editable finder and metadata), not the installer, no .pth files, no customisation."""
    name = entry.name
    if name == "kit" or name.startswith(_NOT_SHARED) or name.endswith(".pth"):
        return False
    return name not in ("__pycache__", "sitecustomize.py", "usercustomize.py")


def fresh_environment(root: Path) -> tuple[str, dict]:
    """A new virtual environment that sees this one's third-party packages (by symbolic links, through a .pth file)
    but not kit, with sockets refused; returns its python and the environment to run it in."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shared = root / "third-party"
    shared.mkdir()
    ours = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for folder in ours:
        for entry in folder.iterdir():
            if _shared(entry) and not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry)
    (site / "third_party.pth").write_text(f"{shared}\n")
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in proxies and not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "KIT_"))
    }
    env |= {
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PIP_NO_INDEX": "1",
        "PYTHONNOUSERSITE": "1",
        "KIT_TEST_SOCKET_LOG": str(root / "sockets.log"),
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return str(python), env


def _in(python: str, env: dict, code: str) -> subprocess.CompletedProcess:
    """``python -c code`` run in the environment's own folder, not in the checkout (the working folder is on the
    path of ``-c``)."""
    cwd = Path(python).parents[2]
    return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def _check_isolated(python: str, env: dict, log: Path) -> None:
    assert _in(python, env, "import kit").returncode != 0, "kit is importable before it is installed"
    assert _in(python, env, "import torch, timm, cv2").returncode == 0, "third-party packages are not shared"
    refused = _in(python, env, "import socket; socket.create_connection(('127.0.0.1', 9))")
    assert refused.returncode != 0 and "network disabled by the offline test" in refused.stderr
    assert "create_connection" in log.read_text()
    log.unlink()


def test_offline_run_bundle_in_a_fresh_environment(run_bundle, trained, tmp_path):
    python, env = fresh_environment(tmp_path)
    log = Path(env["KIT_TEST_SOCKET_LOG"])
    _check_isolated(python, env, log)
    manifest = read_manifest(run_bundle)
    wheel = str(run_bundle / manifest.kit_wheel)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", wheel],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    out = tmp_path / "offline.csv"
    done = _predict_script(run_bundle, "--images", str(trained.images), "--out", str(out), python=python, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first batch: " in done.stdout and "images/s)" in done.stdout
    expected = infer(trained.flip, trained.images, tmp_path / "infer.csv")
    names, points = _table(out)
    assert names == expected.file_names
    np.testing.assert_allclose(points, expected.points, atol=1e-3)
    assert not log.exists(), f"a socket was used: {log.read_text()}"
    location = _in(python, env, "import kit; print(kit.__file__)").stdout
    assert str(Path(kit.__file__).parent.parent) not in location  # the wheel's kit, not this checkout


def test_offline_stack_bundle_installs_kit_itself(stack_bundle, trained, tmp_path):
    python, env = fresh_environment(tmp_path)
    log = Path(env["KIT_TEST_SOCKET_LOG"])
    _check_isolated(python, env, log)
    out = tmp_path / "submission.csv"
    done = _predict_script(stack_bundle, "--data", str(trained.data), "--out", str(out), python=python, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote " in done.stdout and "the submission for 5 images" in done.stdout
    np.testing.assert_allclose(_table(out, ",")[1], _table(trained.stack.with_suffix(".csv"), ",")[1], atol=1e-3)
    images = tmp_path / "offline.csv"
    done = _predict_script(stack_bundle, "--images", str(trained.images), "--out", str(images), python=python, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = infer(trained.stack, trained.images, tmp_path / "infer.csv")
    np.testing.assert_allclose(_table(images)[1], expected.points, atol=1e-3)
    assert _in(python, env, "import kit_extra_dep; assert kit_extra_dep.VALUE == 42").returncode == 0  # --wheels
    assert not log.exists(), f"a socket was used: {log.read_text()}"
