"""``kit infer``: all P landmarks for any folder of face images, from a run's fold models or a blend's or stack's runs.

This is how a trained model is used after the competition: no competition folder is needed. Each image is
cropped exactly as the crop cache crops it (``kit.data.prepare.load_crop``), predicted by every fold model with
the run's TTA, averaged over folds (as ``test.npy`` is), mapped back to original pixels, and, for a blend or stack,
the runs are combined by its model fitted on all folds, as its submission was (``kit.ensemble.record.apply``).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from kit.config import Pipeline
from kit.data.geometry import apply_affine, invert_affine
from kit.data.images import load_image
from kit.data.landmarks import point_columns
from kit.data.prepare import load_crop
from kit.ensemble.source import open_source
from kit.errors import KitError
from kit.io import atomic_path, refuse_inside
from kit.predict.models import inference_device, load_fold_model
from kit.predict.tta import predict_points
from kit.progress import Reporter, SilentReporter
from kit.runs import RunDir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Inferred:
    csv: Path
    file_names: list[str]
    points: np.ndarray  # (N, P, 2) original pixels
    images_per_second: float
    overlays: Path | None
    skipped: int = 0  # files of the images folder that are not images


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """The images of ``folder`` (by suffix, sorted) and the other files and folders in it, which are skipped.

    Raises:
        KitError: the folder is missing or has no image, or an image name is a dangling symbolic link or a loop.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: images folder not found")
    images, others = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            others.append(path)
            continue
        try:
            path.stat()
        except OSError as exc:
            if path.is_symlink():
                what = "a symbolic link loop" if exc.errno == errno.ELOOP else "a dangling symbolic link"
                raise KitError(f"{path}: {what} (remove it or point it at an image)") from None
            raise KitError(f"{path}: cannot read ({exc.strerror})") from None
        (images if path.is_file() else others).append(path)
    if not images:
        raise KitError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images, others


def _enclosing(path: Path, is_what: Callable[[Path], bool]) -> Path | None:
    """``path`` (resolved) or its nearest parent for which ``is_what`` holds, else None."""
    resolved = path.resolve()
    return next((folder for folder in (resolved, *resolved.parents) if is_what(folder)), None)


def _is_competition(folder: Path) -> bool:
    return (folder / "train" / "landmarks.csv").is_file() or (folder / "test" / "test_points.csv").is_file()


def check_outputs(out: Path, overlays: Path | None, images_dir: Path, force: bool) -> None:
    """Refuse outputs that would overwrite or mix with inputs, whatever ``force`` says.

    ``--out`` and ``--overlays`` must lie outside ``--images``, any competition folder and any run folder;
    ``--out`` must not be a folder, nor an existing file without ``force``.

    Raises:
        KitError: naming the option, the path and the folder it falls in.
    """
    for option, path in (("--out", out), ("--overlays", overlays)):
        if path is None:
            continue
        refuse_inside(path, images_dir, option, "the --images folder")
        competition = _enclosing(path, _is_competition)
        if competition is not None:
            raise KitError(f"{option} {path}: inside the competition folder {competition}; write outputs elsewhere")
        run = _enclosing(path, lambda folder: RunDir(folder).is_run())
        if run is not None:
            raise KitError(f"{option} {path}: inside the run folder {run}; write outputs elsewhere")
    if out.is_dir():
        raise KitError(f"--out {out}: is a folder; give the CSV file to write")
    if out.exists() and not force:
        raise KitError(f"{out}: exists (choose another --out, or --force to replace it)")


class CentreCrops(torch.utils.data.Dataset):
    """Centre crops (uint8, size x size) of the padded cache crops; yields ``(crop, zeros, row)`` like CropDataset."""

    def __init__(self, crops: np.ndarray, pad: int, size: int):
        self.crops, self.pad, self.size = crops, pad, size

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int):
        crop = np.ascontiguousarray(self.crops[i, self.pad : self.pad + self.size, self.pad : self.pad + self.size])
        return torch.from_numpy(crop), torch.zeros(0, 2), i


def load_crops(paths: list[Path], size: int, margin: float, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded crops (N, S, S, 3) and their matrices (N, 2, 3); only crops are kept in memory, not the photos."""

    def crop(path: Path):
        return load_crop(path, size, margin, pad)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        pairs = list(pool.map(crop, paths))
    return np.stack([c for c, _ in pairs]), np.stack([m for _, m in pairs])


def crop_loader(
    pipeline: Pipeline, paths: list[Path], device: torch.device, batch_size: int | None, crops_by_setting: dict
) -> tuple[torch.utils.data.DataLoader, np.ndarray]:
    """A run's model inputs for ``paths`` as a loader, and the matrices from crop pixels back to the images'.

    Runs of one crop setting (size, margin, pad) share the decoded crops, kept in ``crops_by_setting``.
    """
    size, margin, pad = pipeline.input.size, pipeline.input.margin, pipeline.input.pad
    setting = (size, margin, pad)
    if setting not in crops_by_setting:
        crops_by_setting[setting] = load_crops(paths, *setting)
    crops, matrices = crops_by_setting[setting]
    loader = torch.utils.data.DataLoader(
        CentreCrops(crops, pad, size),
        batch_size=batch_size or pipeline.train.batch_size * 2,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    return loader, invert_affine(matrices)


def _predict_run(
    run: RunDir,
    paths: list[Path],
    device: torch.device,
    batch_size: int | None,
    progress: Callable[[str], None],
    crops_by_setting: dict,
) -> np.ndarray:
    """The run's fold-averaged predictions (N, P, 2) in original pixels."""
    pipeline = run.read_pipeline()
    metrics = run.read_metrics()
    n_points = metrics.split.n_points
    flip = run.read_flip_permutation() if pipeline.tta.hflip else None
    if pipeline.tta.hflip and flip is None:
        raise KitError(f"{run.path}: the run uses flip TTA but holds no flip permutation (retrain or re-predict it)")
    loader, inverse = crop_loader(pipeline, paths, device, batch_size, crops_by_setting)
    pad = pipeline.input.pad
    folds = [score.fold for score in metrics.folds]
    total = np.zeros((len(paths), n_points, 2), np.float64)
    for fold in folds:
        started = time.perf_counter()
        model = load_fold_model(pipeline, run.checkpoint(fold, "best"), n_points, device)
        points = predict_points(model, loader, device, pipeline.train.amp, pipeline.train.channels_last, flip)
        total += apply_affine(np.asarray(points, np.float64) + pad, inverse).astype(np.float32)
        progress(f"{run.name} fold {fold}: {len(paths) / max(time.perf_counter() - started, 1e-9):,.0f} images/s")
        del model
    return (total / len(folds)).astype(np.float32)


def write_landmarks_csv(path: Path, file_names: list[str], points: np.ndarray) -> None:
    """The ``landmarks.csv`` layout (TAB-separated, float coordinates), atomically."""
    table = pd.DataFrame(points.reshape(len(points), -1), columns=point_columns(points.shape[1]))
    table.insert(0, "file_name", file_names)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def draw_overlay(path: Path, image: np.ndarray, points: np.ndarray) -> None:
    """The image with its predicted points, as PNG, atomically."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    radius = max(1, round(min(image.shape[:2]) / 200))
    for x, y in np.rint(points).astype(int):
        cv2.circle(canvas, (int(x), int(y)), radius, (0, 0, 255), -1, lineType=cv2.LINE_AA)
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(".png", canvas)
        if not ok:
            raise KitError(f"{path}: could not encode the overlay")
        tmp.write_bytes(encoded.tobytes())


def infer(
    source: str | Path,
    images_dir: str | Path,
    out: str | Path,
    overlays: str | Path | None = None,
    force: bool = False,
    batch_size: int | None = None,
    reporter: Reporter | None = None,
) -> Inferred:
    """Predict every image of ``images_dir`` with ``source`` (a run folder, or a blend's or stack's JSON) into ``out``.

    Files of ``images_dir`` without an image suffix are skipped and counted (``Inferred.skipped``).

    Raises:
        KitError: a bad source, an unreadable image or a dangling symbolic link (named), an output inside the
            images, a competition or a run folder (even with ``force``), or an existing ``out`` without ``force``.
    """
    reporter = reporter or SilentReporter()
    out = Path(out)
    images_dir = Path(images_dir)
    source = open_source(source)
    check_outputs(out, Path(overlays) if overlays is not None else None, images_dir, force)
    paths, others = list_images(images_dir)
    if others:
        listed = ", ".join(p.name for p in others[:5]) + (", ..." if len(others) > 5 else "")
        reporter.message(f"{images_dir}: skipped {len(others)} file(s) that are not images: {listed}")
    device = inference_device()
    started = time.perf_counter()
    crops_by_setting = {}
    predictions = [
        _predict_run(run, paths, device, batch_size, reporter.message, crops_by_setting) for run in source.runs
    ]
    blended = source.combine(predictions)
    images_per_second = len(paths) * len(source.runs) / max(time.perf_counter() - started, 1e-9)
    names = [p.name for p in paths]
    write_landmarks_csv(out, names, blended)
    overlay_dir = None
    if overlays is not None:
        overlay_dir = Path(overlays)
        overlay_dir.mkdir(parents=True, exist_ok=True)
        for path, points in zip(paths, blended, strict=True):
            draw_overlay(overlay_dir / f"{path.stem}.png", load_image(path), points)
    return Inferred(
        csv=out,
        file_names=names,
        points=blended,
        images_per_second=images_per_second,
        overlays=overlay_dir,
        skipped=len(others),
    )
