"""``manifest.json``: the typed record of a bundle, and the check of every file it lists.

The manifest lists every file of the bundle with its sha256 and size, except itself and the two Kaggle metadata
files (``kit bundle upload`` may rewrite their dataset id). ``predict.py`` repeats the check with the standard
library alone before it installs kit; ``verify_files`` is the same check inside kit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from kit.errors import KitError
from kit.io import file_sha256, read_json_record, write_json

MANIFEST_FILE = "manifest.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
KERNEL_METADATA_FILE = "kernel-metadata.json"
UNLISTED = (MANIFEST_FILE, DATASET_METADATA_FILE, KERNEL_METADATA_FILE)
FORMAT = "kit-bundle"


class BundleError(KitError):
    """A bundle is damaged, incomplete or not a kit bundle."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class FileEntry(_Record):
    sha256: str
    size: int  # bytes


class FoldWeights(_Record):
    fold: int
    weights: str  # the fold model's .safetensors, relative to the bundle


class BundledRun(_Record):
    """One run of the bundle: its pipeline and flip permutation in ``path``, one weights file per fold."""

    name: str  # the run's label (an ensemble record names its runs by it)
    path: str  # the run's folder in the bundle
    source: str  # the run folder it was copied from
    n_points: int
    folds: tuple[FoldWeights, ...]
    oof_mse: float | None = None


class WeightsLicence(_Record):
    """Where a run's starting weights came from and under which terms: fine-tuned weights derive from them."""

    run: str
    backbone: str
    source: str  # none, hub, file, package (kit.config.PretrainedConfig)
    licence: str
    note: str


class Manifest(_Record):
    format: Literal["kit-bundle"] = FORMAT
    format_version: int = 1
    kit_version: str
    created: str  # UTC, ISO 8601
    kind: Literal["run", "blend", "stack"]
    source: str  # the run folder or ensemble record bundled
    ensemble: str | None = None  # the ensemble record in the bundle (blend or stack)
    runs: tuple[BundledRun, ...]
    weights_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    competition: str | None = None  # Kaggle slug of the competition the kernel reads
    python: str  # the version the bundle was built with
    kit_wheel: str  # relative path
    wheels: tuple[str, ...] = ()  # further wheels to install offline (--wheels), relative paths
    assumes: dict[str, str]  # distribution -> version present on the target image (not bundled)
    modules: dict[str, str] = {}  # top-level module -> distribution, to name a missing dependency
    licences: tuple[WeightsLicence, ...] = ()
    files: dict[str, FileEntry]  # every file but the manifest and the Kaggle metadata, relative path -> entry


def entry_of(path: Path) -> FileEntry:
    return FileEntry(sha256=file_sha256(path), size=path.stat().st_size)


def list_files(root: Path) -> dict[str, FileEntry]:
    """Every file under ``root`` (sorted, POSIX relative paths) but the unlisted ones, with its hash and size."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in UNLISTED:
            files[rel] = entry_of(path)
    return files


def write_manifest(root: Path, manifest: Manifest) -> Path:
    path = root / MANIFEST_FILE
    write_json(path, manifest.model_dump(mode="json"))
    return path


def read_manifest(root: str | Path) -> Manifest:
    """The bundle's manifest, validated.

    Raises:
        BundleError: no manifest, or not a kit bundle's.
    """
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path}: missing (not a kit bundle?)")
    try:
        return read_json_record(path, Manifest, "not a kit bundle manifest")
    except KitError as exc:
        raise BundleError(str(exc)) from None


def verify_files(root: str | Path, manifest: Manifest) -> None:
    """Check every listed file's size and sha256.

    Raises:
        BundleError: one line naming the first missing or changed file.
    """
    root = Path(root)
    for rel, expected in manifest.files.items():
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {MANIFEST_FILE}); the bundle is incomplete")
        if path.stat().st_size != expected.size or file_sha256(path) != expected.sha256:
            raise BundleError(f"{path}: checksum mismatch with {MANIFEST_FILE}; the file was changed or damaged")


def open_bundle(root: str | Path, verify: bool = True) -> Manifest:
    """The manifest of the bundle in ``root``, its files checked first unless ``verify`` is False."""
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    return manifest
