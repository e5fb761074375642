"""Prediction from a bundle: what the bundle's ``predict.py`` calls once it has checked the files and installed kit.

The same computation as ``kit infer``: each image cropped as the crop cache crops it (``load_crop``), every fold
model of every run with the run's TTA and decoder (``predict_points``), folds averaged in original pixels, and an
ensemble's runs combined by its record. Only the weights come from ``.safetensors`` files instead of checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.bundle.manifest import BundledRun, BundleError, FoldWeights, Manifest, open_bundle
from kit.bundle.weights import build_model, read_weights
from kit.data.geometry import apply_affine
from kit.data.landmarks import read_test_points
from kit.ensemble.record import apply, read_record
from kit.errors import KitError
from kit.predict.infer import check_outputs, crop_loader, list_images, write_landmarks_csv
from kit.predict.models import inference_device
from kit.predict.tta import predict_points
from kit.runs import RunDir
from kit.submit.format import write_submission

StateOf = Callable[[BundledRun, FoldWeights], Mapping[str, torch.Tensor]]


def _quiet(line: str) -> None:
    pass


@dataclass(frozen=True)
class Predicted:
    out: Path
    file_names: list[str]
    points: np.ndarray  # (N, P, 2) original pixels, every point, in the order of ``file_names``
    seconds: float  # the whole prediction: crops, every fold model, the ensemble
    images_per_second: float
    submission: bool  # ``out`` is a submission (the requested points of test_points.csv), else every point


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f} s"


class _Estimate:
    """Says, after the first batch of the first model, how long the whole prediction will take."""

    def __init__(self, n_images: int, n_models: int, log: Callable[[str], None]):
        self.n_images, self.n_models, self.log = n_images, n_models, log
        self.reported = False

    def timed(self, loader):
        return loader if self.reported else _FirstBatch(loader, self._report)

    def _report(self, images: int, seconds: float) -> None:
        self.reported = True
        rate = images / max(seconds, 1e-9)
        left = (self.n_images * self.n_models - images) / rate
        self.log(
            f"first batch: {images} images in {seconds:.2f} s ({rate:,.1f} images/s per model); "
            f"about {_duration(left)} more for {self.n_images} images x {self.n_models} fold models"
        )


class _FirstBatch:
    """A loader that calls ``report(images, seconds)`` once its first batch has been consumed."""

    def __init__(self, loader, report: Callable[[int, float], None]):
        self.loader, self.dataset, self.report = loader, loader.dataset, report

    def __iter__(self) -> Iterator:
        started = time.perf_counter()
        for i, batch in enumerate(self.loader):
            yield batch
            if i == 0:
                self.report(len(batch[0]), time.perf_counter() - started)


def _predict_run(
    root: Path,
    run: BundledRun,
    paths: list[Path],
    device: torch.device,
    batch_size: int | None,
    crops_by_setting: dict,
    state_of: StateOf | None,
    clock: _Estimate,
) -> np.ndarray:
    """The run's fold-averaged predictions (N, P, 2) in original pixels, as ``kit infer`` computes them."""
    folder = RunDir(root / run.path)
    pipeline = folder.read_pipeline()
    flip = folder.read_flip_permutation() if pipeline.tta.hflip else None
    if pipeline.tta.hflip and flip is None:
        raise BundleError(f"{folder.path}: the run uses flip TTA but the bundle holds no flip permutation")
    loader, inverse = crop_loader(pipeline, paths, device, batch_size, crops_by_setting)
    pad = pipeline.input.pad
    total = np.zeros((len(paths), run.n_points, 2), np.float64)
    for fold in run.folds:
        source = root / fold.weights
        state = state_of(run, fold) if state_of is not None else read_weights(source)
        model = build_model(pipeline, state, run.n_points, device, str(source))
        points = predict_points(
            model, clock.timed(loader), device, pipeline.train.amp, pipeline.train.channels_last, flip
        )
        total += apply_affine(np.asarray(points, np.float64) + pad, inverse).astype(np.float32)
        del model, state
    return (total / len(run.folds)).astype(np.float32)


def combine(root: Path, manifest: Manifest, per_run: list[np.ndarray]) -> np.ndarray:
    """The bundle's predictions from its runs': the run's own, or the ensemble record applied to them."""
    if manifest.ensemble is None:
        return per_run[0]
    record = read_record(root / manifest.ensemble)
    return np.asarray(apply(record, per_run), np.float32)


def predict_paths(
    root: str | Path,
    manifest: Manifest,
    paths: list[Path],
    batch_size: int | None = None,
    log: Callable[[str], None] = _quiet,
    state_of: StateOf | None = None,
) -> np.ndarray:
    """Every point (N, P, 2) in original pixels of each image of ``paths``, by the bundle in ``root``.

    Args:
        state_of: where a fold's weights come from (default: the bundle's files).
    """
    root = Path(root)
    device = inference_device()
    clock = _Estimate(len(paths), sum(len(run.folds) for run in manifest.runs), log)
    crops_by_setting: dict = {}
    per_run = [
        _predict_run(root, run, paths, device, batch_size, crops_by_setting, state_of, clock) for run in manifest.runs
    ]
    return combine(root, manifest, per_run)


def run(
    bundle_dir: str | Path,
    data: str | Path | None = None,
    images: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int | None = None,
    force: bool = False,
    log: Callable[[str], None] = _quiet,
    verify: bool = True,
) -> Predicted:
    """Predict with the bundle in ``bundle_dir``: a submission for a competition folder, or every point of every image
    of a folder (the ``landmarks.csv`` layout).

    Args:
        data: a competition folder: writes the submission for ``test/test_points.csv`` (default ``submission.csv``).
        images: a folder of images: writes every point of each (default ``landmarks.csv``).
        verify: check every file of the bundle against its manifest first.

    Raises:
        BundleError: a file of the bundle is missing or changed (named).
        KitError: neither or both of ``data`` and ``images``, a bad image, or an output ``kit infer`` would refuse.
    """
    if (data is None) == (images is None):
        raise KitError("give either --data COMPETITION_FOLDER or --images FOLDER")
    root = Path(bundle_dir)
    manifest = open_bundle(root, verify)
    started = time.perf_counter()
    if data is not None:
        data = Path(data)
        test = read_test_points(data / "test" / "test_points.csv", manifest.runs[0].n_points)
        images_dir = data / "test" / "images"
        out = Path(out) if out is not None else Path("submission.csv")
        check_outputs(out, None, images_dir, force)
        names = [str(name) for name in test.file_names]
        points = predict_paths(root, manifest, [images_dir / name for name in names], batch_size, log)
        write_submission(out, points, test)
    else:
        images_dir = Path(images)
        out = Path(out) if out is not None else Path("landmarks.csv")
        check_outputs(out, None, images_dir, force)
        paths, others = list_images(images_dir)
        if others:
            log(f"{images_dir}: skipped {len(others)} file(s) that are not images")
        names = [path.name for path in paths]
        points = predict_paths(root, manifest, paths, batch_size, log)
        write_landmarks_csv(out, names, points)
    seconds = time.perf_counter() - started
    return Predicted(out, names, points, seconds, len(names) / max(seconds, 1e-9), data is not None)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(bundle_dir: str | Path, argv: list[str] | None = None) -> int:
    """``predict.py``'s command line after ``--bundle``; returns the exit code (1 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(prog="predict.py", description="Landmarks with a kit bundle, offline.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--data", type=Path, help="competition folder: writes the submission (default: found under /kaggle/input)"
    )
    where.add_argument("--images", type=Path, help="folder of images: writes every point of each")
    parser.add_argument("--out", type=Path, help="CSV to write (default: submission.csv, or landmarks.csv)")
    parser.add_argument(
        "--batch-size", type=_positive, help="images per batch (default: each run's training batch x 2)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args, _ = parser.parse_known_args(argv)  # a notebook kernel passes arguments of its own

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        data = args.data if args.data is not None or args.images is not None else find_competition()
        result = run(bundle_dir, data, args.images, args.out, args.batch_size, args.force, log, verify=False)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    what = "the submission" if result.submission else f"{result.points.shape[1]} points of each"
    log(
        f"wrote {result.out}: {what} for {len(result.file_names)} images in {result.seconds:.1f} s "
        f"({result.images_per_second:,.1f} images/s)"
    )
    return 0


def find_competition(base: Path = Path("/kaggle/input")) -> Path:
    """The one competition folder (holding ``test/test_points.csv``) under a Kaggle notebook's inputs.

    Raises:
        KitError: none or several.
    """
    found = sorted(
        {p.parents[1] for depth in ("*", "*/*", "*/*/*") for p in base.glob(f"{depth}/test/test_points.csv")}
    )
    if len(found) != 1:
        what = "no competition folder" if not found else f"{len(found)} competition folders"
        raise KitError(f"{base}: {what} with test/test_points.csv; give --data or --images")
    return found[0]
