"""A fold's checkpoints, typed: ``last.pt`` (``LastCheckpoint``, what a fold resumes from) and ``best.pt``
(``BestCheckpoint``, the weights of its best epoch), written atomically: a kill -9 at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kit.errors import KitError
from kit.io import WriteError, atomic_path, free_bytes
from kit.records import EpochStats, Identity, Numerics


@dataclass
class EpochProgress:
    """How far an epoch got: carried in a mid-epoch checkpoint so a resumed epoch reports what an uninterrupted
    one would (its mean loss over all its steps)."""

    next_step: int = 0  # steps of the epoch done
    loss_sum: float = 0.0
    images: int = 0
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.next_step if self.next_step else float("nan")


@dataclass
class BestCheckpoint:
    """``best.pt``: the weights of a fold's best epoch (the EMA's, with ``train.ema``)."""

    model: dict[str, Any]  # the model's state_dict
    epoch: int  # 0-based
    valid_mse: float  # original pixels, without TTA
    identity: Identity | None = None  # None: written by an older kit

    def save(self, path: Path) -> None:
        save_checkpoint(path, {**_fields(self), "identity": _dump(self.identity)})

    @classmethod
    def load(cls, path: Path) -> BestCheckpoint:
        """The checkpoint at ``path``.

        Raises:
            KitError: unreadable, or not a fold's best checkpoint, naming the file and the remedy.
        """
        state = load_checkpoint(path)
        _require(path, state, ("model",))
        return cls(
            model=state["model"],
            epoch=state.get("epoch", -1),
            valid_mse=state.get("valid_mse", float("nan")),
            identity=_identity(state),
        )


@dataclass
class LastCheckpoint:
    """``last.pt``: everything an unfinished fold resumes from."""

    model: dict[str, Any]  # the model's state_dict
    optimizer: dict[str, Any]  # the optimiser's state_dict
    ema: dict[str, Any] | None  # the weights' EMA's state_dict; None without ``train.ema``
    epoch: int  # the last finished epoch, or the one ``partial`` stopped in
    partial: EpochProgress | None  # how far ``epoch`` got when stopped inside it; None: it finished
    history: list[EpochStats]  # the finished epochs
    best_valid_mse: float  # the best validation MSE so far (inf before the first epoch)
    best_epoch: int  # its epoch (-1 before the first)
    elapsed: float  # seconds of training so far
    identity: Identity  # what the fold is trained from
    mixed_numerics: list[Numerics] = field(default_factory=list)  # earlier numerics it trained with (--allow-mixed)

    @property
    def next_epoch(self) -> int:
        """The epoch to train next: the one stopped inside, else the one after the last finished."""
        return self.epoch if self.partial is not None else self.epoch + 1

    def save(self, path: Path) -> None:
        state = _fields(self, exclude=("best_valid_mse", "best_epoch"))
        save_checkpoint(
            path,
            state
            | {
                "partial": dataclasses.asdict(self.partial) if self.partial is not None else None,
                "history": [h.model_dump() for h in self.history],
                "best": {"valid_mse": self.best_valid_mse, "epoch": self.best_epoch},
                "identity": self.identity.model_dump(),
                "mixed_numerics": [n.model_dump() for n in self.mixed_numerics],
            },
        )

    @classmethod
    def load(cls, path: Path) -> LastCheckpoint:
        """The checkpoint at ``path``.

        Raises:
            KitError: unreadable, or not a resumable fold checkpoint, naming the file and the remedy.
        """
        state = load_checkpoint(path)
        _require(path, state, ("model", "optimizer", "epoch", "history", "best", "elapsed", "identity"))
        identity = _identity(state)
        if identity is None:
            raise KitError(f"{path}: not a kit fold checkpoint (its identity is unreadable); {_remedy(path)}")
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            ema=state.get("ema"),
            epoch=state["epoch"],
            partial=EpochProgress(**state["partial"]) if state.get("partial") else None,
            history=[EpochStats.model_validate(h) for h in state["history"]],
            best_valid_mse=state["best"]["valid_mse"],
            best_epoch=state["best"]["epoch"],
            elapsed=state["elapsed"],
            identity=identity,
            mixed_numerics=[Numerics.model_validate(n) for n in state.get("mixed_numerics") or ()],
        )


def _fields(obj, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass's fields, shallow (``dataclasses.asdict`` would deep-copy every tensor)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in exclude}


def _dump(record) -> dict | None:
    return record.model_dump() if record is not None else None


def _require(path: Path, state: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise KitError(f"{path}: not a kit fold checkpoint (no {', '.join(missing)}); {_remedy(path)}")


def _identity(state: dict) -> Identity | None:
    data = state.get("identity")
    try:
        return Identity.model_validate(data) if data is not None else None
    except ValueError:
        return None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically.

    Raises:
        WriteError: a full disk or an unwritable folder, in one line naming ``path`` (torch's own error for a
            failed write is a multi-line ``RuntimeError``).
    """
    needed = _state_bytes(state)
    with atomic_path(path, needed=needed) as tmp:
        failure = None
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            if not _is_write_failure(exc):
                raise
            failure, cause = str(exc).strip().splitlines()[0], _write_errno(tmp, needed)
        if failure is not None:
            # Out of the handler: torch's writer, and the open file holding the disk space, went with its traceback.
            if cause is None:
                raise WriteError(f"{path}: cannot write the checkpoint ({failure})")
            raise OSError(cause, os.strerror(cause))


def _state_bytes(state) -> int:
    """Bytes of the tensors (and arrays) in ``state``: about the size of its checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return int(getattr(state, "nbytes", 0) or 0)


def _is_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return any(marker in text for marker in ("enforce fail", "file write failed", "PytorchStreamWriter failed"))


def _write_errno(tmp: Path, needed: int) -> int | None:
    """Why torch could not write ``tmp`` (it does not say): ENOSPC, EROFS, EACCES, or None when unknown."""
    written = tmp.stat().st_size if tmp.exists() else 0
    free = free_bytes(tmp.parent)
    if free is not None and free + written < needed + (1 << 20):
        return errno.ENOSPC
    try:
        if os.statvfs(tmp.parent).f_flag & os.ST_RDONLY:
            return errno.EROFS
    except OSError:
        return None
    return None if os.access(tmp.parent, os.W_OK) else errno.EACCES


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's state dict.

    Raises:
        KitError: the file is truncated or not a checkpoint, naming it.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise KitError(f"{path}: missing") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise KitError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: truncated or garbage); {_remedy(path)}"
        ) from None
    if not isinstance(state, dict):
        raise KitError(f"{path}: not a kit checkpoint")
    return state


def _remedy(path: Path) -> str:
    """What to delete: ``last.pt`` (an unfinished fold's; a finished fold has none) restarts the fold; a finished
    fold keeps its record, so a bad ``best.pt`` is retrained only without the whole fold folder."""
    folder = path.parent
    if path.name == "last.pt":
        return f"delete it to retrain {folder.name} from its start"
    return f"delete the folder {folder} and rerun kit fold-train to retrain {folder.name}"


def read_identity(path: Path) -> Identity | None:
    """The ``Identity`` a checkpoint was written under, or None (written by an older kit).

    Raises:
        KitError: the checkpoint is unreadable, naming it and the remedy.
    """
    return _identity(load_checkpoint(path))
