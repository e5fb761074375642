"""Derived files go to a writable workspace when the competition folder is read-only (a Kaggle /kaggle/input)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from tiny import set_args, tiny_settings
from typer.testing import CliRunner

from kit.cli import app
from kit.data import competition as competition_module
from kit.data.competition import Competition, resolve_workspace
from kit.data.folds import load_folds, make_folds, write_folds
from kit.data.prepare import prepare_crops

AS_ROOT = os.geteuid() == 0
SIZE, PAD = 24, 4


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: what a command must leave unchanged."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _under(path, folder: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).absolute().is_relative_to(folder.absolute())
    except TypeError:  # a file descriptor
        return False


@pytest.fixture
def read_only(monkeypatch):
    """``make(folder)``: the folder reads as read-only (``os.access``), as a read-only mount does for root too.

    Not as root, the folder is also made read-only for real (``chmod -R a-w``, undone afterwards).
    """
    folders: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and any(Path(os.fsdecode(path)).absolute() == f.absolute() for f in folders):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)

    def make(folder: Path) -> Path:
        folders.append(folder)
        if not AS_ROOT:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return folder

    yield make
    if not AS_ROOT:
        for folder in folders:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def erofs(monkeypatch):
    """``make(folder)``: creating or writing anything under ``folder`` fails with EROFS (works as root too)."""
    folders: list[Path] = []

    def fail_under(path) -> None:
        if any(_under(path, f) for f in folders):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_os_open, real_open = os.mkdir, os.open, builtins.open

    def mkdir(path, *args, **kwargs):
        fail_under(path)
        return real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            fail_under(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            fail_under(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    return folders.append


@pytest.fixture
def tiny(make_competition, tmp_path, monkeypatch):
    monkeypatch.delenv("KIT_WORKSPACE", raising=False)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "kit-cache"))
    return make_competition("data", n_train=6, n_test=3)


def test_resolution_order(tiny, tmp_path, monkeypatch, read_only):
    root = tiny.root
    assert resolve_workspace(root) == (root, "data folder")
    assert resolve_workspace(root, tmp_path / "ws") == (tmp_path / "ws", "--workspace")
    monkeypatch.setenv("KIT_WORKSPACE", str(tmp_path / "env"))
    assert resolve_workspace(root) == (tmp_path / "env", "KIT_WORKSPACE")
    assert resolve_workspace(root, tmp_path / "ws")[0] == tmp_path / "ws"  # the option beats the environment
    monkeypatch.delenv("KIT_WORKSPACE")
    read_only(root)
    path, reason = resolve_workspace(root)
    assert reason == "data folder is read-only" and path.parent == tmp_path / "kit-cache" / "workspaces"
    assert path.name.startswith("data-") and resolve_workspace(root)[0] == path  # stable
    other = tmp_path / "other" / "data"
    other.mkdir(parents=True)
    read_only(other)
    assert resolve_workspace(other)[0] != path  # same name, other folder: another workspace


def test_competition_built_directly_resolves_like_load(tiny, tmp_path, read_only):
    read_only(tiny.root)
    loaded = Competition.load(tiny.root)
    direct = Competition(tiny.root)  # as kit blend and kit submit build it
    assert direct.workspace == loaded.workspace != tiny.root and direct == loaded
    assert loaded.cache_dir == loaded.workspace / ".kit_cache"
    assert loaded.workspace_note == f"workspace: {loaded.workspace} (data folder is read-only)"
    assert Competition.load(tiny.root, workspace=tiny.root).workspace_note is None


def test_kit_cache_dir_is_the_models_cache_dir(monkeypatch, tmp_path):
    from kit.models.weights import cache_dir

    assert competition_module._kit_cache_dir() == cache_dir()
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))
    assert competition_module._kit_cache_dir() == cache_dir() == tmp_path


def _derived_in(workspace: Path) -> None:
    assert (workspace / "flip_permutation.txt").is_file() and (workspace / "folds.csv").is_file()
    assert len(list((workspace / ".kit_cache").glob("crops-train-*"))) == 1
    assert len(list((workspace / ".kit_cache").glob("crops-test-*"))) == 1
    assert not list((workspace / ".kit_cache").glob("*.tmp*"))
    assert list((workspace / "train" / ".kit_cache").glob("landmarks-*.points.npy"))  # the parsed table


@pytest.mark.parametrize("how", ["option", "env", "default"])
def test_check_folds_prepare_on_read_only_data(tiny, tmp_path, monkeypatch, read_only, how):
    data = read_only(tiny.root)
    before = _snapshot(data)
    option: list[str] = []
    if how == "option":
        workspace, reason = tmp_path / "ws", "--workspace"
        option = ["--workspace", str(workspace)]
    elif how == "env":
        workspace, reason = tmp_path / "env-ws", "KIT_WORKSPACE"
        monkeypatch.setenv("KIT_WORKSPACE", str(workspace))
    else:
        workspace, reason = resolve_workspace(data)[0], "data folder is read-only"
    outputs = []
    for command in (["check", str(data)], ["folds", str(data), "--k", "3"], ["prepare", str(data), "--size", "24"]):
        result = CliRunner().invoke(app, [*command, *option])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == f"workspace: {workspace} ({reason})"
        outputs.append(result.output)
    assert f"stored in {workspace / 'flip_permutation.txt'}" in outputs[0]
    assert outputs[1].splitlines()[1].startswith(f"wrote {workspace / 'folds.csv'}: 3 folds")
    assert _snapshot(data) == before  # nothing written in the data folder
    _derived_in(workspace)

    comp = Competition.load(data, workspace=workspace if how == "option" else None)
    assert comp.workspace == workspace
    assert comp.folds_csv == workspace / "folds.csv" and comp.flip_file == workspace / "flip_permutation.txt"
    np.testing.assert_array_equal(comp.flip_permutation(), tiny.perm)
    assert sorted(np.bincount(load_folds(comp.folds_csv, comp.train.file_names))) == [2, 2, 2]
    cache = prepare_crops(comp, "train", 24, 0.0, 16)  # the CLI's defaults: found again, not rebuilt
    assert cache.path.parent == workspace / ".kit_cache" and cache.images().shape == (6, 56, 56, 3)
    assert _snapshot(data) == before


def test_files_left_beside_read_only_data_are_still_read(tiny, tmp_path, read_only):
    comp = Competition.load(tiny.root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=2, seed=0))
    (tiny.root / "flip_permutation.txt").write_text("".join(f"{j}\n" for j in tiny.perm))
    data = read_only(tiny.root)
    before = _snapshot(data)
    workspace = tmp_path / "ws"
    comp = Competition.load(data, workspace=workspace)
    assert comp.folds_csv == data / "folds.csv" and comp.flip_file == data / "flip_permutation.txt"
    np.testing.assert_array_equal(comp.flip_permutation(), tiny.perm)

    result = CliRunner().invoke(app, ["folds", str(data), "--k", "3", "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    assert comp.folds_csv == workspace / "folds.csv"  # a new split in the workspace wins
    assert int(load_folds(comp.folds_csv, comp.train.file_names).max()) == 2
    assert _snapshot(data) == before


def test_writable_data_folder_keeps_derived_files_beside_it(tiny):
    result = CliRunner().invoke(app, ["folds", str(tiny.root), "--k", "3"])
    assert result.exit_code == 0 and "workspace:" not in result.output
    assert result.output.startswith(f"wrote {tiny.root / 'folds.csv'}")
    cache = prepare_crops(tiny.root, "train", SIZE, 0.0, PAD)
    assert cache.path.parent == tiny.root / ".kit_cache"
    assert list((tiny.root / "train" / ".kit_cache").glob("landmarks-*.npy"))


@pytest.mark.parametrize(
    "command, target",
    [
        (["folds", "--k", "3"], "folds.csv"),
        (["check"], "flip_permutation.txt"),
        (["prepare", "--size", "24"], ".kit_cache/crops-train-24-m0-p16"),  # a first build: no key yet
    ],
)
def test_read_only_workspace_is_a_one_line_error(tiny, tmp_path, erofs, command, target):
    workspace = tmp_path / "ro"
    workspace.mkdir()
    erofs(workspace)
    before = _snapshot(tiny.root)
    result = CliRunner().invoke(app, [command[0], str(tiny.root), *command[1:], "--workspace", str(workspace)])
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: {workspace / target}"), result.output
    assert error[0].endswith(": read-only file system") and result.output.rstrip().endswith("read-only file system")
    assert list(workspace.iterdir()) == [] and _snapshot(tiny.root) == before


@pytest.mark.skipif(AS_ROOT, reason="running as root: chmod does not stop root's writes (EROFS is faked above)")
def test_unwritable_workspace_for_real(tiny, tmp_path):
    workspace = tmp_path / "ro"
    workspace.mkdir()
    workspace.chmod(0o555)
    try:
        result = CliRunner().invoke(app, ["folds", str(tiny.root), "--workspace", str(workspace)])
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == f"error: {workspace / 'folds.csv'}: permission denied"
        result = CliRunner().invoke(app, ["prepare", str(tiny.root), "--workspace", str(workspace)])
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1].endswith(": permission denied")
        assert list(workspace.iterdir()) == []
    finally:
        workspace.chmod(0o755)


@pytest.mark.slow  # trains
def test_fold_train_on_read_only_data(tiny, tmp_path, monkeypatch, read_only):
    data = read_only(tiny.root)
    before = _snapshot(data)
    workspace = tmp_path / "env-ws"
    monkeypatch.setenv("KIT_WORKSPACE", str(workspace))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nmodel: {pretrained: {source: none}}\n")
    sets = set_args(tiny_settings({"train.batch_size": 4}, drop=("augment.noise",)))
    command = ["fold-train", str(pipeline), "--data", str(data), "--out", str(tmp_path / "runs"), "--folds", "0"]
    result = CliRunner().invoke(app, [*command, *sets])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"workspace: {workspace} (KIT_WORKSPACE)"
    assert (workspace / "folds.csv").is_file() and (workspace / "flip_permutation.txt").is_file()
    assert list((workspace / ".kit_cache").glob("crops-train-32-*")) and _snapshot(data) == before
