"""Atomic checkpoints: a kill -9 at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

from kit.errors import KitError
from kit.io import WriteError, atomic_path, free_bytes


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


def read_identity(path: Path):
    """The ``Identity`` a checkpoint was written under, or None (written by an older kit).

    Raises:
        KitError: the checkpoint is unreadable, naming it and the remedy.
    """
    from kit.runs import Identity

    data = load_checkpoint(path).get("identity")
    try:
        return Identity.model_validate(data) if data is not None else None
    except ValueError:
        return None
