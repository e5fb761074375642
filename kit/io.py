"""Atomic file writes: an artifact is either absent, the old version, or complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kit.errors import KitError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it is renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the artifact the permissions of a normally created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def refuse_inside(path: str | Path, root: str | Path, what: str, root_what: str = "the competition folder") -> None:
    """Refuse an output location that is ``root`` or inside it (both resolved; ``path`` need not exist yet).

    Args:
        path: where outputs would go.
        root: a folder that outputs must not be written into.
        what: how the message names ``path``, e.g. ``--out-dir``.
        root_what: how the message names ``root``.

    Raises:
        KitError: e.g. ``--out-dir data/train: inside the competition folder data; write outputs elsewhere``.
    """
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved == base or base in resolved.parents:
        raise KitError(f"{what} {path}: inside {root_what} {root}; write outputs elsewhere")
