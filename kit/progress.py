"""Progress reporting for training: a silent default, and a rich one for the terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class Reporter(Protocol):
    def start_epoch(self, fold: int, epoch: int, epochs: int, n_batches: int) -> None: ...

    def batch(self, loss: float, images_per_second: float, advance: int = 1) -> None:
        """``advance`` steps done since the last call (the loss is read every ``train.log_every`` steps)."""

    def end_epoch(self, fold: int, epoch: int, stats: dict) -> None: ...

    def message(self, text: str) -> None: ...

    def progress(self, total: int, description: str) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        """A bar of ``total`` steps for a long step outside the epochs (assembly, pseudo-labels), with its rate
        and time left; yields ``advance(n)``."""


class SilentReporter:
    def start_epoch(self, fold: int, epoch: int, epochs: int, n_batches: int) -> None:
        pass

    def batch(self, loss: float, images_per_second: float, advance: int = 1) -> None:
        pass

    def end_epoch(self, fold: int, epoch: int, stats: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


def format_epoch(fold: int, epoch: int, stats: dict) -> str:
    best = " *" if stats.get("is_best") else ""
    return (
        f"fold {fold} epoch {epoch + 1}/{stats['epochs']}  loss {stats['train_loss']:.4f}  "
        f"valid MSE {stats['valid_mse']:.3f}  {stats['images_per_second']:.0f} img/s  "
        f"({stats['train_seconds']:.1f}s + {stats['valid_seconds']:.1f}s){best}"
    )
