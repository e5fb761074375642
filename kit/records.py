"""The typed records below both the run folder (``kit.runs``) and the checkpoints (``kit.checkpoint``): what
produced a fold (``SplitInfo``, ``Numerics``, ``Identity``) and its epochs (``EpochStats``).

``kit.runs`` re-exports them: import them from there.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

import kit

if TYPE_CHECKING:
    from kit.config import Pipeline
    from kit.data.competition import Competition


def names_sha256(file_names: np.ndarray) -> str:
    """Content hash of an ordered list of file names (identifies the rows of a table)."""
    return hashlib.sha256("\n".join(map(str, file_names)).encode()).hexdigest()


def json_sha256(obj) -> str:
    """Content hash of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Record(BaseModel):
    # Older kits wrote extra keys: reading ignores them; every record the kit writes is complete.
    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())


class SplitInfo(Record):
    """What a run's predictions are aligned with; runs can be blended only when these are equal."""

    folds_sha256: str  # content hash of folds.csv
    train_names_sha256: str  # the training rows, in order
    test_names_sha256: str  # the test rows, in order
    n_points: int
    labels_sha256: str | None = None  # the parsed training points (Landmarks.digest); None: written by an older kit

    @classmethod
    def of(cls, comp: Competition) -> SplitInfo:
        from kit.io import file_sha256

        return cls(
            folds_sha256=file_sha256(comp.folds_csv),
            train_names_sha256=names_sha256(comp.train.file_names),
            test_names_sha256=names_sha256(comp.test.file_names),
            n_points=comp.n_points,
            labels_sha256=comp.train.digest,
        )

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True)

    def digest(self) -> str:
        """Hash of the rows, points and folds (the labels are compared on their own, ``Identity.labels_sha256``)."""
        return json_sha256(self.model_dump(exclude={"labels_sha256"}))

    def first_difference(self, other: SplitInfo) -> str | None:
        """The first field that differs; labels recorded on one side only (an older kit) are not a difference."""
        for key in type(self).model_fields:
            mine, theirs = getattr(self, key), getattr(other, key)
            if key == "labels_sha256" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                return key
        return None


class Numerics(Record):
    """What changes a fold's floating-point results besides its inputs: the device and, on the CPU, the threads."""

    device: str  # torch device type: cpu, cuda, mps
    threads: int | None = None  # torch's intra-op CPU threads (OMP_NUM_THREADS, kit sweep --jobs); None on a GPU
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def describe(self) -> str:
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads is not None else ""
        return f"{self.device}{threads}" + (", deterministic" if self.deterministic else "")


class Identity(Record):
    """What produced a fold: a fold is taken as done only by a run with the same identity.

    The fields added after the first kit default to None: a fold finished by an older kit recorded neither its
    labels nor its images, and is refused as "not recorded" rather than assumed to match.
    """

    pipeline_sha256: str  # the resolved pipeline, without its name
    split_sha256: str  # SplitInfo.digest(): rows, points and folds
    kit_version: str
    labels_sha256: str | None = None  # SplitInfo.labels_sha256: the parsed training points
    images_sha256: str | None = None  # every training and test image's content (kit.data.prepare.images_sha256)
    numerics: Numerics | None = None  # the device and CPU threads the fold trained with

    @classmethod
    def of(
        cls, pipeline: Pipeline, split: SplitInfo, images_sha256: str | None = None, numerics: Numerics | None = None
    ) -> Identity:
        return cls(
            pipeline_sha256=pipeline_sha256(pipeline),
            split_sha256=split.digest(),
            kit_version=kit.__version__,
            labels_sha256=split.labels_sha256,
            images_sha256=images_sha256,
            numerics=numerics,
        )

    def differences(self, other: Identity, numerics: bool = True) -> list[str]:
        """What differs from ``other``, in words (labels, images, split, pipeline, kit version, numerics).

        Args:
            numerics: also compare the numerics (False: results of other threads or devices are accepted).
        """
        names = {
            "labels_sha256": "labels",
            "images_sha256": "images",
            "split_sha256": "split",
            "pipeline_sha256": "pipeline",
            "kit_version": "kit version",
        }
        found = []
        for key, name in names.items():
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                found.append(f"{name} (not recorded by the older kit that trained it)" if mine is None else name)
        if numerics and self.numerics != other.numerics:
            found.append("numerics")
        return found

    def matches(self, other: Identity | None, numerics: bool = True) -> bool:
        return other is not None and not self.differences(other, numerics)


def pipeline_sha256(pipeline: Pipeline) -> str:
    """Hash of the resolved pipeline without its name (a renamed copy of a run is the same training) and where it is
    tracked (logging elsewhere trains nothing differently)."""
    return json_sha256(pipeline.model_dump(mode="json", exclude={"name", "tracking"}))


class EpochStats(Record):
    """One epoch of one fold."""

    epoch: int  # 0-based
    epochs: int  # planned epochs
    train_loss: float
    train_images: int
    train_seconds: float
    images_per_second: float
    valid_mse: float  # original pixels, without TTA
    valid_seconds: float
    valid_nme: float | None = None  # percent of the face size, without TTA (None: written by an older kit)
