"""Training one fold: fit on the other folds, keep the best epoch by validation MSE in original pixels, predict."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.config import Pipeline
from kit.data.dataset import CropDataset, RawCropBatches, keep_batch, seed_worker
from kit.data.gpu_augment import make_batch_transform
from kit.data.prepare import CropCache
from kit.metrics import mse
from kit.models import create_model
from kit.models.base import LandmarkModel
from kit.predict.tta import predict_original as _predict_original
from kit.progress import Reporter, SilentReporter
from kit.runs import EpochStats, FoldSummary, Identity, RunDir
from kit.train.distributed import DistInfo, barrier, check_in_sync
from kit.train.engine import make_optimizer, train_one_epoch


@dataclass
class FoldData:
    """What a fold needs from the competition, already loaded once for all folds."""

    train_cache: CropCache
    test_cache: CropCache
    points: np.ndarray  # (N, P, 2) original pixels
    folds: np.ndarray  # (N,) fold of each training row
    flip_perm: np.ndarray | None


def _loader(
    dataset,
    batch_size: int,
    pipeline: Pipeline,
    device: torch.device,
    shuffle: bool,
    dist: DistInfo,
    seed: int,
    collate_fn=None,
) -> DataLoader:
    workers = pipeline.train.num_workers
    sampler = None
    if shuffle and dist.enabled:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
        collate_fn=collate_fn,
    )


def predict_original(
    model: LandmarkModel,
    cache: CropCache,
    rows: np.ndarray,
    pipeline: Pipeline,
    device: torch.device,
    flip_perm: np.ndarray | None,
) -> np.ndarray:
    """Original-pixel predictions (len(rows), P, 2) for ``rows`` of ``cache``, with the pipeline's batch settings."""
    return _predict_original(
        model,
        cache,
        rows,
        device,
        pipeline.train.batch_size * 2,
        pipeline.train.amp,
        pipeline.train.channels_last,
        flip_perm,
        pipeline.train.num_workers,
    )


def train_fold(
    pipeline: Pipeline,
    data: FoldData,
    fold: int,
    run: RunDir,
    identity: Identity,
    device: torch.device,
    dist: DistInfo = DistInfo(),
    reporter: Reporter | None = None,
) -> FoldSummary | None:
    """Train and predict one fold into ``run``; resumes from its ``last.pt``. Returns the summary (main process)."""
    reporter = reporter or SilentReporter()
    cfg = pipeline.train
    seed = cfg.seed * 1000 + fold
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    train_rows = np.flatnonzero(data.folds != fold)
    valid_rows = np.flatnonzero(data.folds == fold)
    n_points = data.points.shape[1]

    if pipeline.augment.gpu:
        train_set = RawCropBatches(data.train_cache, train_rows, data.points)
        train_loader = _loader(train_set, cfg.batch_size, pipeline, device, True, dist, seed, keep_batch)
    else:
        train_set = CropDataset(data.train_cache, train_rows, data.points, pipeline.augment, data.flip_perm, seed)
        train_loader = _loader(train_set, cfg.batch_size, pipeline, device, True, dist, seed)
    steps_per_epoch = len(train_loader)
    if cfg.max_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)

    model = create_model(pipeline, n_points)
    # Mean training shape in model-input pixels (the centre crop): the regression head starts there.
    model.set_mean_shape(torch.from_numpy(train_set.points.mean(axis=0) - data.train_cache.pad))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, pipeline.optim, device)
    ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None

    history: list[EpochStats] = []
    best = {"valid_mse": float("inf"), "epoch": -1}
    start_epoch, elapsed = 0, 0.0
    last_path, best_path = run.checkpoint(fold, "last"), run.checkpoint(fold, "best")
    if last_path.is_file():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        history = [EpochStats.model_validate(h) for h in state["history"]]
        best, elapsed = state["best"], state["elapsed"]
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        reporter.message(f"fold {fold}: resuming after epoch {start_epoch}")

    train_model = DistributedDataParallel(model) if dist.enabled else model
    # Photometric augmentation (and, with augment.gpu, the geometry too) runs on the device for both paths; each
    # rank of a DDP run draws its own stream.
    batch_transform = make_batch_transform(
        pipeline.augment,
        pipeline.input.size,
        model.mean,
        model.std,
        cfg.channels_last,
        data.flip_perm,
        device,
        seed + 1000 * dist.rank,
        geometry_on_device=pipeline.augment.gpu,
    )
    truth = data.points[valid_rows]
    for epoch in range(start_epoch, cfg.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        reporter.start_epoch(fold, epoch, cfg.epochs, steps_per_epoch)
        stats = train_one_epoch(
            train_model,
            train_loader,
            optimizer,
            pipeline,
            device,
            epoch,
            steps_per_epoch,
            ema,
            reporter,
            batch_transform,
        )
        if dist.is_main:
            valid_start = time.perf_counter()
            eval_model = ema.module if ema is not None else model
            predicted = predict_original(eval_model, data.train_cache, valid_rows, pipeline, device, None)
            epoch_stats = EpochStats(
                epoch=epoch,
                epochs=cfg.epochs,
                valid_mse=mse(predicted, truth),
                valid_seconds=time.perf_counter() - valid_start,
                images_per_second=stats["train_images"] * dist.world_size / max(stats["train_seconds"], 1e-9),
                **stats,
            )
            is_best = epoch_stats.valid_mse < best["valid_mse"]
            if is_best:
                best = {"valid_mse": epoch_stats.valid_mse, "epoch": epoch}
                save_checkpoint(
                    best_path,
                    {
                        "model": eval_model.state_dict(),
                        "epoch": epoch,
                        "valid_mse": epoch_stats.valid_mse,
                        "identity": identity.model_dump(),
                    },
                )
            elapsed += time.perf_counter() - epoch_start
            history.append(epoch_stats)
            save_checkpoint(
                last_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "epoch": epoch,
                    "history": [h.model_dump() for h in history],
                    "best": best,
                    "elapsed": elapsed,
                    "rng": torch.get_rng_state(),
                    "identity": identity.model_dump(),
                },
            )
            reporter.end_epoch(fold, epoch, epoch_stats.model_dump() | {"is_best": is_best})
        barrier(dist)

    check_in_sync(model, dist)
    summary = None
    if dist.is_main:
        model.load_state_dict(load_checkpoint(best_path)["model"])
        tta = data.flip_perm if pipeline.tta.hflip else None
        oof = predict_original(model, data.train_cache, valid_rows, pipeline, device, tta)
        test = predict_original(
            model, data.test_cache, np.arange(len(data.test_cache.transforms())), pipeline, device, tta
        )
        images = sum(h.train_images for h in history) * dist.world_size
        seconds = sum(h.train_seconds for h in history)
        summary = FoldSummary(
            fold=fold,
            mse=mse(oof, truth),
            best_epoch=best["epoch"],
            best_valid_mse_no_tta=best["valid_mse"],
            epochs=cfg.epochs,
            wall_seconds=elapsed,
            images_per_second=images / max(seconds, 1e-9),
            n_train=len(train_rows),
            n_valid=len(valid_rows),
            history=tuple(history),
            identity=identity,
            world_size=dist.world_size,
        )
        run.write_fold(fold, summary, oof, test)  # the summary last: its presence marks the fold finished
        last_path.unlink(missing_ok=True)
    barrier(dist)
    return summary
