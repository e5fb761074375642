"""Progress reporting for training: a silent default, and structured records for a parent process.

A reporter (``Reporter``) turns training events into what a person reads. A parent process (``kit sweep``) reads
``Record``s instead: fold-train writes one JSON object per line to the file descriptor named by ``$KIT_PROGRESS_FD``
(``RecordSink``), and the parent reads each line back with ``read_record``, never the console text.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROGRESS_FD = "KIT_PROGRESS_FD"  # the file descriptor fold-train writes its records to (set by kit sweep)


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


def format_epoch(fold: int, epoch: int, stats: Mapping) -> str:
    """The console line of a finished epoch (``stats``: ``kit.runs.EpochStats`` fields and ``is_best``)."""
    best = " *" if stats.get("is_best") else ""
    return (
        f"fold {fold} epoch {epoch + 1}/{stats['epochs']}  loss {stats['train_loss']:.4f}  "
        f"valid MSE {stats['valid_mse']:.3f}  {stats['images_per_second']:.0f} img/s  "
        f"({stats['train_seconds']:.1f}s + {stats['valid_seconds']:.1f}s){best}"
    )


# ---------------------------------------------------------------- records


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class EpochRecord(_Record):
    """A fold finished an epoch."""

    event: Literal["epoch"] = "epoch"
    fold: int
    epoch: int  # 1-based: epoch ``epoch`` of ``epochs``, as the console counts
    epochs: int
    loss: float  # mean training loss
    valid_mse: float  # original pixels, without TTA
    valid_nme: float | None = None  # percent of the face size, without TTA
    images_per_second: float  # training images per second
    seconds: float  # training and validation
    best: bool = False  # the best validation MSE of the fold so far

    @classmethod
    def of(cls, fold: int, epoch: int, stats: Mapping) -> EpochRecord:
        """The record of what ``Reporter.end_epoch`` gets (a 0-based ``epoch``)."""
        return cls(
            fold=fold,
            epoch=epoch + 1,
            epochs=stats["epochs"],
            loss=stats["train_loss"],
            valid_mse=stats["valid_mse"],
            valid_nme=stats.get("valid_nme"),
            images_per_second=stats["images_per_second"],
            seconds=stats["train_seconds"] + stats["valid_seconds"],
            best=bool(stats.get("is_best")),
        )


class FoldRecord(_Record):
    """A fold started training, was skipped (finished earlier) or is done."""

    event: Literal["fold"] = "fold"
    fold: int
    state: Literal["started", "skipped", "done"]
    mse: float | None = None  # skipped, done: the fold's OOF MSE


class RunRecord(_Record):
    """fold-train ended its work on the run: assembled (``oof_mse``), or waiting for other folds."""

    event: Literal["run"] = "run"
    name: str
    oof_mse: float | None = None  # None: some folds of the split are not finished yet
    missing: tuple[int, ...] = ()  # the folds not finished yet


class ErrorRecord(_Record):
    """fold-train failed (the one line it prints as ``error: ...``), or was interrupted by a signal."""

    event: Literal["error"] = "error"
    text: str
    interrupted: bool = False  # stopped by a signal after saving what resumes it


Record = Annotated[EpochRecord | FoldRecord | RunRecord | ErrorRecord, Field(discriminator="event")]
RECORDS: TypeAdapter[Record] = TypeAdapter(Record)


def read_record(line: str | bytes) -> Record | None:
    """The record of one JSON line; None for anything else (not JSON, an unknown event)."""
    try:
        return RECORDS.validate_json(line)
    except ValidationError:
        return None


class RecordSink:
    """Writes records, one JSON line each, to a file descriptor; a write that fails turns it off, never the training.

    Args:
        fd: the descriptor (a pipe's write end); None: records go nowhere.
    """

    def __init__(self, fd: int | None = None):
        self.fd = fd

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RecordSink:
        """The sink of ``$KIT_PROGRESS_FD``; records go nowhere without it (and in a DDP process of rank > 0)."""
        env = os.environ if env is None else env
        value = env.get(PROGRESS_FD, "")
        if not value.isdigit() or env.get("RANK", "0") != "0":
            return cls(None)
        return cls(int(value))

    def __bool__(self) -> bool:
        return self.fd is not None

    def emit(self, record: Record) -> None:
        if self.fd is None:
            return
        data = (record.model_dump_json() + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # the reader is gone, or the descriptor was never ours
            self.fd = None

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """An exception leaving the block is written as an ``ErrorRecord`` first (its one line), then raised."""
        from kit.errors import Interrupted, KitError

        try:
            yield
        except Interrupted as exc:
            self.emit(ErrorRecord(text=str(exc), interrupted=True))
            raise
        except KitError as exc:
            self.emit(ErrorRecord(text=str(exc)))
            raise
        except KeyboardInterrupt:
            self.emit(ErrorRecord(text="KeyboardInterrupt", interrupted=True))
            raise
        except Exception as exc:
            line = next((part for part in str(exc).splitlines() if part.strip()), "")
            self.emit(ErrorRecord(text=f"{type(exc).__name__}: {line}" if line else type(exc).__name__))
            raise


class EpochListener:
    """``inner``, and ``on_epoch(fold, epoch, stats)`` called after each finished epoch."""

    def __init__(self, inner: Reporter, on_epoch: Callable[[int, int, dict], None]):
        self.inner, self.on_epoch = inner, on_epoch

    def start_epoch(self, fold: int, epoch: int, epochs: int, n_batches: int) -> None:
        self.inner.start_epoch(fold, epoch, epochs, n_batches)

    def batch(self, loss: float, images_per_second: float, advance: int = 1) -> None:
        self.inner.batch(loss, images_per_second, advance)

    def end_epoch(self, fold: int, epoch: int, stats: dict) -> None:
        self.inner.end_epoch(fold, epoch, stats)
        self.on_epoch(fold, epoch, stats)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def progress(self, total: int, description: str):
        return self.inner.progress(total, description)


class RecordingReporter(EpochListener):
    """``inner``, and each finished epoch written to ``sink`` as an ``EpochRecord``."""

    def __init__(self, inner: Reporter, sink: RecordSink):
        super().__init__(inner, lambda fold, epoch, stats: sink.emit(EpochRecord.of(fold, epoch, stats)))
