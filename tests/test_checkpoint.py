"""Checkpoints: typed ``last.pt`` and ``best.pt`` round trips, and torch's multi-line error for a failed write becomes
one line naming the file."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from kit.checkpoint import (
    BestCheckpoint,
    EpochProgress,
    LastCheckpoint,
    load_checkpoint,
    read_identity,
    save_checkpoint,
)
from kit.errors import KitError
from kit.records import EpochStats, Identity, Numerics

# What torch.save raises on a full disk (measured on a 2 MB tmpfs, torch 2.x).
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def _usage(free: int):
    return shutil._ntuple_diskusage(total=10**12, used=10**12 - free, free=free)


def _failing_save(message: str, written: int = 100):
    def save(state, path):
        with open(path, "wb") as f:
            f.write(b"\0" * written)
        raise RuntimeError(message)

    return save


@pytest.fixture
def state():
    return {"model": {"w": torch.zeros(1_000_000)}, "epoch": 3}  # 4 MB of tensors


def test_round_trip(tmp_path, state):
    save_checkpoint(tmp_path / "last.pt", state)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert os.listdir(tmp_path) == ["last.pt"]


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, state):
    path = tmp_path / "runs" / "x" / "fold0" / "last.pt"
    save_checkpoint(path, {"epoch": 2})
    monkeypatch.setattr(torch, "save", _failing_save(TORCH_FULL_DISK))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _usage(50_000))
    with pytest.raises(KitError) as caught:
        save_checkpoint(path, state)
    assert str(caught.value) == f"{path}: no space left on device (needed ~4.0 MB, free 50.0 kB)"
    assert load_checkpoint(path)["epoch"] == 2 and os.listdir(path.parent) == ["last.pt"]


def test_file_write_failed_on_a_read_only_file_system(tmp_path, monkeypatch, state):
    real_statvfs = os.statvfs

    def read_only_statvfs(path):
        st = real_statvfs(path)
        fields = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
        return SimpleNamespace(**{f: getattr(st, f) for f in fields}, f_flag=st.f_flag | os.ST_RDONLY)

    failed = "PytorchStreamWriter failed writing file data/0: file write failed"
    monkeypatch.setattr(torch, "save", _failing_save(failed))
    monkeypatch.setattr(os, "statvfs", read_only_statvfs)
    with pytest.raises(KitError, match=r"best\.pt: read-only file system$"):
        save_checkpoint(tmp_path / "best.pt", state)
    assert os.listdir(tmp_path) == []


def test_a_write_failure_of_unknown_cause_is_still_one_line(tmp_path, monkeypatch, state):
    monkeypatch.setattr(torch, "save", _failing_save(f"{TORCH_FULL_DISK}\nframe #0: c10::Error ...\nframe #1: ..."))
    with pytest.raises(KitError) as caught:
        save_checkpoint(tmp_path / "last.pt", state)  # plenty of space, writable: the cause is unknown
    assert str(caught.value) == f"{tmp_path / 'last.pt'}: cannot write the checkpoint ({TORCH_FULL_DISK})"
    assert os.listdir(tmp_path) == []


def test_other_runtime_errors_propagate(tmp_path, monkeypatch, state):
    monkeypatch.setattr(torch, "save", _failing_save("cannot pickle 'generator' object"))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(tmp_path / "last.pt", state)
    assert os.listdir(tmp_path) == []


IDENTITY = Identity(pipeline_sha256="p", split_sha256="s", kit_version="0", numerics=Numerics(device="cpu", threads=2))
STATS = EpochStats(
    epoch=0,
    epochs=3,
    train_loss=1.0,
    train_images=8,
    train_seconds=1.0,
    images_per_second=8.0,
    valid_mse=2.0,
    valid_seconds=0.1,
)


def _last(partial: EpochProgress | None) -> LastCheckpoint:
    return LastCheckpoint(
        model={"w": torch.arange(3.0)},
        optimizer={"state": {}, "param_groups": []},
        ema=None,
        epoch=1,
        partial=partial,
        history=[STATS],
        best_valid_mse=2.0,
        best_epoch=0,
        elapsed=5.0,
        identity=IDENTITY,
        mixed_numerics=[Numerics(device="cpu", threads=1)],
    )


@pytest.mark.parametrize("partial", [None, EpochProgress(next_step=2, loss_sum=3.0, images=16, seconds=1.5)])
def test_last_checkpoint_round_trip_keeps_the_files_keys(tmp_path, partial):
    path = tmp_path / "fold0" / "last.pt"
    _last(partial).save(path)
    loaded = LastCheckpoint.load(path)
    assert loaded.partial == partial and loaded.history == [STATS] and loaded.identity == IDENTITY
    assert loaded.mixed_numerics == [Numerics(device="cpu", threads=1)] and torch.equal(
        loaded.model["w"], torch.arange(3.0)
    )
    assert loaded.next_epoch == (1 if partial else 2)
    raw = load_checkpoint(path)  # the layout earlier kits wrote and read
    assert raw["best"] == {"valid_mse": 2.0, "epoch": 0} and raw["history"] == [STATS.model_dump()]
    assert raw["partial"] == (None if partial is None else vars(partial)) and read_identity(path) == IDENTITY


def test_best_checkpoint_round_trip(tmp_path):
    BestCheckpoint({"w": torch.ones(2)}, epoch=4, valid_mse=1.5, identity=IDENTITY).save(tmp_path / "best.pt")
    loaded = BestCheckpoint.load(tmp_path / "best.pt")
    assert (loaded.epoch, loaded.valid_mse, loaded.identity) == (4, 1.5, IDENTITY)
    assert set(load_checkpoint(tmp_path / "best.pt")) == {"model", "epoch", "valid_mse", "identity"}


def test_a_checkpoint_missing_its_keys_is_named(tmp_path):
    path = tmp_path / "fold0" / "last.pt"
    save_checkpoint(path, {"model": {}, "epoch": 0})
    with pytest.raises(KitError, match=r"last\.pt: not a kit fold checkpoint \(no optimizer, history, .*delete it"):
        LastCheckpoint.load(path)
    save_checkpoint(tmp_path / "best.pt", {"epoch": 0})
    with pytest.raises(KitError, match=r"best\.pt: not a kit fold checkpoint \(no model\)"):
        BestCheckpoint.load(tmp_path / "best.pt")
