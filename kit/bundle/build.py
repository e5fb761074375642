"""``kit bundle``: a finished run, blend or stack as a self-contained folder for a Kaggle code competition.

The folder holds what inference needs and nothing else: each member run's resolved ``pipeline.yaml``, flip
permutation and fold weights (``.safetensors``), an ensemble's record and fitted parameters, kit's wheel (and any
``--wheels``), ``predict.py``, the pretrained weights' licence note, the Kaggle metadata, and ``manifest.json``
with every file's sha256 and size. It is written beside ``--out`` and moved onto it only when complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import kit
from kit.bundle import script
from kit.bundle.licences import LICENCE_FILE, licence_text, weights_licence
from kit.bundle.manifest import (
    MANIFEST_FILE,
    BundledRun,
    FoldWeights,
    Manifest,
    list_files,
    read_manifest,
    write_manifest,
)
from kit.bundle.metadata import SCRIPT_FILE, check_dataset, default_dataset, write_metadata
from kit.bundle.predict import predict_paths
from kit.bundle.weights import save_weights
from kit.bundle.wheel import assumed_packages, build_kit_wheel, module_owners
from kit.checkpoint import load_checkpoint
from kit.ensemble.source import Source, open_source
from kit.errors import KitError
from kit.io import atomic_path, check_output_folder, refuse_inside, swap_in_folder, write_text
from kit.predict.infer import list_images
from kit.predict.models import inference_device
from kit.runs import FLIP_FILE, RunDir

HALF = {"fp16": "float16", "bf16": "bfloat16"}
ENSEMBLE_DIR, RUNS_DIR, WHEELS_DIR = "ensemble", "runs", "wheels"


@dataclass(frozen=True)
class Measured:
    images: int
    seconds: float  # crops, every fold model and the ensemble, models loaded from the bundle
    images_per_second: float
    device: str
    half_max_change_px: float | None = None  # max |half - full precision| over the measured coordinates
    half_mean_change_px: float | None = None  # their mean


@dataclass(frozen=True)
class Built:
    out: Path
    manifest: Manifest
    size_bytes: int
    measured: Measured | None = None


def _folder_names(runs: tuple[RunDir, ...]) -> list[str]:
    """A folder name per run under ``runs/``: its name, numbered where two share one."""
    names, seen = [], {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        names.append(run.name if seen[run.name] == 1 else f"{run.name}-{seen[run.name]}")
    return names


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target, needed=source.stat().st_size) as tmp:
        shutil.copyfile(source, tmp)


def _bundle_run(
    run: RunDir, label: str, folder: str, staging: Path, dtype: str, log: Callable[[str], None]
) -> BundledRun:
    """Copy what inference needs of ``run`` into ``staging/folder``."""
    metrics = run.read_metrics()
    target = staging / folder
    _copy(run.pipeline_file, target / run.pipeline_file.name)
    if run.read_pipeline().tta.hflip and (run.path / FLIP_FILE).is_file():  # flip TTA needs it, nothing else
        _copy(run.path / FLIP_FILE, target / FLIP_FILE)
    folds = []
    for score in metrics.folds:
        checkpoint = run.checkpoint(score.fold, "best")
        state = load_checkpoint(checkpoint)
        if "model" not in state:
            raise KitError(f"{checkpoint}: holds no model weights")
        weights = f"{folder}/fold{score.fold}.safetensors"
        save_weights(staging / weights, state["model"], dtype)
        folds.append(FoldWeights(fold=score.fold, weights=weights))
    log(f"{label}: {len(folds)} fold models ({dtype})")
    return BundledRun(
        name=label,
        path=folder,
        source=str(run.path.resolve()),
        n_points=metrics.split.n_points,
        folds=tuple(folds),
        oof_mse=metrics.oof_mse,
    )


def _copy_wheels(wheels: Path | None, target: Path, kit_wheel: Path) -> list[Path]:
    if wheels is None:
        return []
    found = sorted(p for p in Path(wheels).glob("*.whl") if p.name != kit_wheel.name)
    if not found:
        raise KitError(f"--wheels {wheels}: no .whl files")
    for wheel in found:
        _copy(wheel, target / wheel.name)
    return [target / wheel.name for wheel in found]


def _check_out(out: Path, source: Source, force: bool) -> None:
    for run in source.runs:
        refuse_inside(out, run.path, "--out", "the run folder")
    if out.exists():
        if not force:
            raise KitError(f"{out}: exists (choose another --out, or --force to replace it)")
        if not (out / MANIFEST_FILE).is_file():
            raise KitError(f"{out}: exists and is not a kit bundle; not replacing it")
    check_output_folder(out, "--out")


def _write(
    source: Source,
    staging: Path,
    dtype: str,
    wheels: Path | None,
    dataset: str,
    competition: str | None,
    log: Callable[[str], None],
) -> Manifest:
    labels = list(source.record.run_names) if source.record is not None else [source.runs[0].name]
    folders = [f"{RUNS_DIR}/{name}" for name in _folder_names(source.runs)]
    runs = [
        _bundle_run(run, label, folder, staging, dtype, log)
        for run, label, folder in zip(source.runs, labels, folders, strict=True)
    ]
    ensemble = None
    if source.record is not None:
        _copy(source.path, staging / ENSEMBLE_DIR / source.path.name)
        arrays = source.record.arrays.file
        _copy(source.path.parent / arrays, staging / ENSEMBLE_DIR / arrays)
        ensemble = f"{ENSEMBLE_DIR}/{source.path.name}"
    kit_wheel = build_kit_wheel(staging / WHEELS_DIR)
    extra = _copy_wheels(wheels, staging / WHEELS_DIR, kit_wheel)
    log(f"wheels: {kit_wheel.name}" + (f" + {len(extra)} from --wheels" if extra else ""))
    _copy(Path(script.__file__), staging / SCRIPT_FILE)
    licences = [
        weights_licence(run.name, run_dir.read_pipeline()) for run, run_dir in zip(runs, source.runs, strict=True)
    ]
    write_text(staging / LICENCE_FILE, licence_text(licences, kit.__version__))
    write_metadata(staging, dataset, competition)
    assumes = assumed_packages()
    manifest = Manifest(
        kit_version=kit.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        kind=source.record.kind if source.record is not None else "run",
        source=str(source.path.resolve()),
        ensemble=ensemble,
        runs=tuple(runs),
        weights_dtype=dtype,
        competition=competition,
        python=".".join(map(str, sys.version_info[:3])),
        kit_wheel=kit_wheel.relative_to(staging).as_posix(),
        wheels=tuple(p.relative_to(staging).as_posix() for p in extra),
        assumes=assumes,
        modules=module_owners(assumes),
        licences=tuple(licences),
        files=list_files(staging),
    )
    write_manifest(staging, manifest)
    return manifest


def _sample(data: Path, n: int) -> list[Path]:
    images, _ = list_images(data / "test" / "images")
    return images[:n]


def measure(
    out: Path, manifest: Manifest, paths: list[Path], log: Callable[[str], None] = lambda line: None
) -> Measured:
    """Time the bundle's prediction of ``paths`` (models loaded from the bundle); with half weights, also the largest
    change of a predicted coordinate against the runs' full-precision checkpoints."""
    started = time.perf_counter()
    points = predict_paths(out, manifest, paths, log=log)
    seconds = time.perf_counter() - started
    change = None
    if manifest.weights_dtype != "float32":

        def full(run: BundledRun, fold: FoldWeights):
            return load_checkpoint(RunDir(Path(run.source)).checkpoint(fold.fold, "best"))["model"]

        change = np.abs(points - predict_paths(out, manifest, paths, state_of=full))
    device = inference_device().type
    if change is None:
        return Measured(len(paths), seconds, len(paths) / max(seconds, 1e-9), device)
    return Measured(
        len(paths), seconds, len(paths) / max(seconds, 1e-9), device, float(change.max()), float(change.mean())
    )


def build_bundle(
    source: str | Path,
    out: str | Path,
    wheels: str | Path | None = None,
    half: str | None = None,
    dataset: str | None = None,
    competition: str | None = None,
    force: bool = False,
    data: str | Path | None = None,
    measure_images: int = 32,
    log: Callable[[str], None] = lambda line: None,
) -> Built:
    """Write the bundle of ``source`` (a finished run folder, or a blend's or stack's NAME.json) to ``out``.

    Args:
        wheels: a folder of wheels of dependencies the target image lacks, installed offline by ``predict.py``.
        half: ``fp16`` or ``bf16``: store the weights in half precision (half the size).
        dataset: the Kaggle dataset ``USER/SLUG`` the metadata names (default ``$KAGGLE_USERNAME/kit-NAME``).
        competition: the competition slug the kernel reads.
        force: replace an existing bundle at ``out`` (only a kit bundle, and only once the new one is complete).
        data: a competition folder: predict ``measure_images`` of its test images with the finished bundle to
            measure its speed (and, with ``half``, the predictions' largest change).

    Raises:
        KitError: a bad source, an existing ``out`` without ``force`` (or one that is not a bundle), an ``out``
            inside a member run, a bad ``--dataset``, no wheels in ``wheels``, or a failed wheel build.
    """
    out = Path(out)
    if half is not None and half not in HALF:
        raise KitError(f"--half {half!r}: choose fp16 or bf16")
    dtype = HALF[half] if half is not None else "float32"
    found = open_source(source)
    dataset = dataset or default_dataset(found.path.stem if found.record is not None else found.runs[0].name)
    check_dataset(dataset)
    _check_out(out, found, force)
    if data is not None and not (Path(data) / "test" / "images").is_dir():
        raise KitError(f"--data {data}: no test/images folder (expected a competition folder)")
    staging = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _write(found, staging, dtype, Path(wheels) if wheels else None, dataset, competition, log)
        swap_in_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = read_manifest(out)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    measured = measure(out, manifest, _sample(Path(data), measure_images), log) if data is not None else None
    return Built(out, manifest, size, measured)
