"""Training one fold: fit on the other folds, keep the best epoch by validation MSE in original pixels, predict."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.config import Pipeline
from kit.data.dataset import ConcatCrops, CropDataset, RawCropBatches, keep_batch
from kit.data.gpu_augment import make_batch_transform
from kit.data.prepare import CropCache
from kit.errors import KitError
from kit.io import read_rows
from kit.metrics import landmark_scores
from kit.models import create_model
from kit.models.base import LandmarkModel
from kit.predict.tta import predict_original as _predict_original
from kit.progress import Reporter, SilentReporter
from kit.runs import EpochStats, FoldSummary, Identity, Numerics, RunDir
from kit.train.distributed import DistInfo, barrier, check_in_sync, select_device
from kit.train.engine import EpochProgress, NonFiniteLoss, make_optimizer, train_one_epoch
from kit.train.pseudo import PseudoLabels
from kit.train.sampling import EpochSampler
from kit.train.signals import Interrupted, StopRequest


@dataclass
class FoldData:
    """What a fold needs from the competition, already loaded once for all folds."""

    train_cache: CropCache
    test_cache: CropCache
    points: np.ndarray  # (N, P, 2) original pixels
    folds: np.ndarray  # (N,) fold of each training row
    flip_perm: np.ndarray | None
    pseudo: PseudoLabels | None = None  # test images labelled by the source's fold-k models, per fold
    nme_points: tuple[int, int] | None = None  # the face size's two points for NME; None: the face box


def _train_loader(dataset, pipeline: Pipeline, device: torch.device, sampler: EpochSampler, collate_fn=None):
    workers = pipeline.train.num_workers
    return DataLoader(
        dataset,
        batch_size=pipeline.train.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > pipeline.train.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
    )


def train_loader(
    pipeline: Pipeline,
    data: FoldData,
    rows: np.ndarray,
    device: torch.device,
    seed: int,
    dist: DistInfo = DistInfo(),
    pseudo: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[DataLoader, EpochSampler]:
    """The training loader of ``rows`` (CPU geometry in workers, or raw crops for the device) and its sampler.

    ``pseudo`` = (test rows, (M_test, P, 2) labels): those test images join the training rows, a
    ``pipeline.pseudo.weight`` fraction of them drawn into each epoch.
    """
    cfg = pipeline.augment

    def crops(cache, cache_rows, points):
        if cfg.gpu:
            return RawCropBatches(cache, cache_rows, points)
        return CropDataset(cache, cache_rows, points, cfg, data.flip_perm, seed)

    dataset = crops(data.train_cache, rows, data.points)
    extra = per_epoch = 0
    if pseudo is not None and len(pseudo[0]):
        dataset = ConcatCrops(dataset, crops(data.test_cache, pseudo[0], pseudo[1]))
        extra = len(pseudo[0])
        per_epoch = round(pipeline.pseudo.weight * extra) if pipeline.pseudo is not None else extra
    sampler = EpochSampler(len(rows), seed, dist.rank, dist.world_size, extra=extra, extra_per_epoch=per_epoch)
    return _train_loader(dataset, pipeline, device, sampler, keep_batch if cfg.gpu else None), sampler


def predict_original(
    model: LandmarkModel,
    cache: CropCache,
    rows: np.ndarray,
    pipeline: Pipeline,
    device: torch.device,
    flip_perm: np.ndarray | None,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Original-pixel predictions (len(rows), P, 2) for ``rows`` of ``cache``, with the pipeline's batch settings;
    ``advance(n)`` after each batch."""
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
        advance,
    )


def _earlier_numerics(state: dict, identity: Identity) -> list[Numerics]:
    """The other numerics a resumed checkpoint was trained with (``--allow-mixed``), its own last."""
    mixed = [Numerics.model_validate(n) for n in state.get("mixed_numerics") or ()]
    saved = (state.get("identity") or {}).get("numerics")
    if saved is not None:
        numerics = Numerics.model_validate(saved)
        if numerics != identity.numerics and numerics not in mixed:
            mixed.append(numerics)
    return mixed


def _resume(state: dict, model, optimizer, ema) -> tuple[list[EpochStats], dict, float, int, EpochProgress | None]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    history = [EpochStats.model_validate(h) for h in state["history"]]
    partial = EpochProgress(**state["partial"]) if state.get("partial") else None
    next_epoch = state["epoch"] if partial is not None else state["epoch"] + 1
    return history, state["best"], state["elapsed"], next_epoch, partial


@contextlib.contextmanager
def runtime_faults(fold: int, pipeline: Pipeline):
    """Turn the faults of a training process into one-line errors that name the fold and the remedy."""
    cfg = pipeline.train
    try:
        yield
    except torch.OutOfMemoryError:
        raise KitError(
            f"fold {fold}: out of device memory at train.batch_size={cfg.batch_size}; lower it "
            f"(--set train.batch_size={max(1, cfg.batch_size // 2)}) or input.size"
        ) from None
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        first = str(exc).splitlines()[0]
        raise KitError(
            f"fold {fold}: a DataLoader worker died ({first}); with train.num_workers={cfg.num_workers} "
            "it may be out of shared memory (/dev/shm) or memory: lower train.num_workers (0 loads in "
            "the main process)"
        ) from None


def _stop_now(stop: StopRequest | None, dist: DistInfo) -> bool:
    """Under DDP every rank must stop at the same point: they agree once per epoch (one all-reduce)."""
    if not dist.enabled:
        return bool(stop)
    flag = torch.tensor([1.0 if stop else 0.0], device=select_device(dist))
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def train_fold(
    pipeline: Pipeline,
    data: FoldData,
    fold: int,
    run: RunDir,
    identity: Identity,
    device: torch.device,
    dist: DistInfo = DistInfo(),
    reporter: Reporter | None = None,
    stop: StopRequest | None = None,
) -> FoldSummary | None:
    """Train and predict one fold into ``run``; resumes from its ``last.pt``. Returns the summary (main process).

    Every random stream is a function of (seed, epoch, step) (``kit.train.sampling``): a fold stopped by ``stop``
    (SIGTERM, SIGINT) at a step boundary, or killed after an epoch, and resumed ends as an uninterrupted run.

    Raises:
        Interrupted: ``stop`` was set; a resumable checkpoint was saved first.
        NonFiniteLoss: the loss or gradient norm became non-finite; the last finite checkpoint stays.
    """
    reporter = reporter or SilentReporter()
    cfg = pipeline.train
    seed = cfg.seed * 1000 + fold
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # Images with corrupt data (--skip-corrupt) are predicted, never trained on.
    train_rows = np.setdiff1d(np.flatnonzero(data.folds != fold), data.train_cache.corrupt)
    valid_rows = np.flatnonzero(data.folds == fold)
    n_points = data.points.shape[1]

    pseudo = None
    if data.pseudo is not None:
        with reporter.progress(data.pseudo.n_test, f"fold {fold} pseudo-labels") as advance:
            pseudo = data.pseudo.for_fold(fold, advance)
    if pseudo is not None and data.test_cache.corrupt:
        pseudo = (np.setdiff1d(pseudo[0], data.test_cache.corrupt), pseudo[1])
    loader, sampler = train_loader(pipeline, data, train_rows, device, seed, dist, pseudo)
    steps_per_epoch = len(loader)
    if cfg.max_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)

    model = create_model(pipeline, n_points)
    # Mean training shape in model-input pixels (the centre crop): the regression head starts there.
    model.set_mean_shape(torch.from_numpy(loader.dataset.points.mean() - data.train_cache.pad))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, pipeline.optim, device)
    ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None

    history: list[EpochStats] = []
    best = {"valid_mse": float("inf"), "epoch": -1}
    start_epoch, elapsed, partial = 0, 0.0, None
    mixed: list[Numerics] = []
    last_path, best_path = run.checkpoint(fold, "last"), run.checkpoint(fold, "best")
    if last_path.is_file():
        state = load_checkpoint(last_path)
        history, best, elapsed, start_epoch, partial = _resume(state, model, optimizer, ema)
        mixed = _earlier_numerics(state, identity)
        where = f"epoch {start_epoch + 1} step {partial.next_step}" if partial else f"epoch {start_epoch}"
        also = f" (trained so far with {', '.join(n.describe() for n in mixed)}: --allow-mixed)" if mixed else ""
        reporter.message(f"fold {fold}: resuming after {where}{also}")

    def save_last(epoch: int, progress: EpochProgress | None) -> None:
        save_checkpoint(
            last_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch,
                "partial": dataclasses.asdict(progress) if progress is not None else None,
                "history": [h.model_dump() for h in history],
                "best": best,
                "elapsed": elapsed,
                "identity": identity.model_dump(),
                "mixed_numerics": [n.model_dump() for n in mixed],
            },
        )

    def interrupted(epoch: int, step: int | None) -> Interrupted:
        where = f"epoch {epoch + 1}" + (f" step {step}" if step is not None else " end")
        return Interrupted(
            f"{stop.name} in fold {fold} {where}: saved {last_path}; rerun the same command to resume", stop.signum
        )

    train_model = DistributedDataParallel(model) if dist.enabled else model
    # Photometric augmentation (and, with augment.gpu, the geometry too) runs on the device for both paths.
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
    truth = read_rows(data.points, valid_rows)
    for epoch in range(start_epoch, cfg.epochs):
        progress, partial = partial or EpochProgress(), None
        sampler.set_epoch(epoch, skip=progress.next_step * cfg.batch_size)
        epoch_start = time.perf_counter()
        reporter.start_epoch(fold, epoch, cfg.epochs, steps_per_epoch)
        progress = train_one_epoch(
            train_model,
            loader,
            optimizer,
            pipeline,
            device,
            epoch,
            steps_per_epoch,
            ema,
            reporter,
            batch_transform,
            progress=progress,
            should_stop=(lambda: bool(stop)) if not dist.enabled else None,
            seed=seed + 1000 * dist.rank,
            fold=fold,
        )
        if progress.next_step < steps_per_epoch:  # stopped by a signal at a step boundary
            if dist.is_main:
                elapsed += time.perf_counter() - epoch_start
                save_last(epoch, progress)
            raise interrupted(epoch, progress.next_step)
        if dist.is_main:
            valid_start = time.perf_counter()
            eval_model = ema.module if ema is not None else model
            original = predict_original(eval_model, data.train_cache, valid_rows, pipeline, device, None)
            scores = landmark_scores(original, truth, data.nme_points)
            valid_mse = scores.mse
            if not np.isfinite(valid_mse):
                raise NonFiniteLoss(
                    f"fold {fold} epoch {epoch + 1}: validation predictions are not finite; lower "
                    f"optim.lr (now {pipeline.optim.lr:g}) or set optim.clip_grad"
                )
            epoch_stats = EpochStats(
                epoch=epoch,
                epochs=cfg.epochs,
                train_loss=progress.mean_loss,
                train_images=progress.images,
                train_seconds=progress.seconds,
                valid_mse=valid_mse,
                valid_nme=scores.nme,
                valid_seconds=time.perf_counter() - valid_start,
                images_per_second=progress.images * dist.world_size / max(progress.seconds, 1e-9),
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
            save_last(epoch, None)
            reporter.end_epoch(fold, epoch, epoch_stats.model_dump() | {"is_best": is_best})
        barrier(dist)
        if epoch + 1 < cfg.epochs and _stop_now(stop, dist):
            raise interrupted(epoch, None)

    check_in_sync(model, dist)
    summary = None
    if dist.is_main:
        model.load_state_dict(load_checkpoint(best_path)["model"])
        tta = data.flip_perm if pipeline.tta.hflip else None
        with reporter.progress(len(valid_rows), f"fold {fold} OOF predictions") as advance:
            oof = predict_original(model, data.train_cache, valid_rows, pipeline, device, tta, advance)
        test_rows = np.arange(len(data.test_cache.transforms()))
        with reporter.progress(len(test_rows), f"fold {fold} test predictions") as advance:
            test = predict_original(model, data.test_cache, test_rows, pipeline, device, tta, advance)
        images = sum(h.train_images for h in history) * dist.world_size
        seconds = sum(h.train_seconds for h in history)
        scores = landmark_scores(oof, truth, data.nme_points)
        summary = FoldSummary(
            fold=fold,
            mse=scores.mse,
            nme=scores.nme,
            failure_rate=scores.failure_rate,
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
            mixed_numerics=tuple(mixed),
        )
        run.write_fold(fold, summary, oof, test)  # the summary last: its presence marks the fold finished
        last_path.unlink(missing_ok=True)
    barrier(dist)
    return summary
