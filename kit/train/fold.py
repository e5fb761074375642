"""Training one fold: fit on the other folds, keep the best epoch by validation MSE in original pixels, predict."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from kit.checkpoint import BestCheckpoint, EpochProgress, LastCheckpoint
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
from kit.train.engine import NonFiniteLoss, make_optimizer, train_one_epoch
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
    f, state = _build_fold(pipeline, data, fold, run, identity, device, dist, reporter or SilentReporter(), stop)
    for epoch in range(state.start_epoch, pipeline.train.epochs):
        epoch_start = time.perf_counter()
        progress = _run_epoch(f, state, epoch, epoch_start)
        if dist.is_main:
            stats = _validate(f, epoch, progress)
            _keep_epoch(f, state, epoch, stats, epoch_start)
        barrier(dist)
        if epoch + 1 < pipeline.train.epochs and _stop_now(stop, dist):
            raise _interrupted(f, epoch, None)
    return _finish_fold(f, state)


@dataclass
class _Fold:
    """One fold's training, built once by ``_build_fold``: what every epoch works with."""

    pipeline: Pipeline
    data: FoldData
    fold: int
    run: RunDir
    identity: Identity
    device: torch.device
    dist: DistInfo
    reporter: Reporter
    stop: StopRequest | None
    seed: int  # of every random stream of the fold (kit.train.sampling)
    train_rows: np.ndarray  # training-cache rows trained on
    valid_rows: np.ndarray  # training-cache rows of the fold: validated, then predicted (OOF)
    truth: np.ndarray  # their points, original pixels
    loader: DataLoader
    sampler: EpochSampler
    steps_per_epoch: int
    model: LandmarkModel
    train_model: nn.Module  # ``model``, wrapped in DDP when distributed
    optimizer: torch.optim.Optimizer
    ema: ModelEmaV3 | None  # the weights' EMA, validated instead of the model (train.ema)
    batch_transform: Callable

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.run.checkpoint(self.fold, "last")

    @property
    def best_path(self) -> Path:
        return self.run.checkpoint(self.fold, "best")


@dataclass
class _FoldState:
    """How far the fold got: what ``last.pt`` keeps besides the weights."""

    history: list[EpochStats] = field(default_factory=list)  # the finished epochs
    best_valid_mse: float = float("inf")
    best_epoch: int = -1
    elapsed: float = 0.0  # seconds of training so far
    start_epoch: int = 0  # the first epoch this process trains
    partial: EpochProgress | None = None  # how far ``start_epoch`` got before a stop inside it
    mixed: list[Numerics] = field(default_factory=list)  # earlier numerics the fold trained with (--allow-mixed)


def _build_fold(
    pipeline: Pipeline,
    data: FoldData,
    fold: int,
    run: RunDir,
    identity: Identity,
    device: torch.device,
    dist: DistInfo,
    reporter: Reporter,
    stop: StopRequest | None,
) -> tuple[_Fold, _FoldState]:
    """Seed, the loader, the model, optimiser and EMA, resumed from ``last.pt`` when there is one."""
    cfg = pipeline.train
    seed = cfg.seed * 1000 + fold
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # Images with corrupt data (--skip-corrupt) are predicted, never trained on.
    train_rows = np.setdiff1d(np.flatnonzero(data.folds != fold), data.train_cache.corrupt)
    valid_rows = np.flatnonzero(data.folds == fold)

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

    model = create_model(pipeline, data.points.shape[1])
    # Mean training shape in model-input pixels (the centre crop): the regression head starts there.
    model.set_mean_shape(torch.from_numpy(loader.dataset.points.mean() - data.train_cache.pad))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, pipeline.optim, device)
    ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None
    state = _resume(run.checkpoint(fold, "last"), model, optimizer, ema, identity, fold, reporter)
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
    built = _Fold(
        pipeline=pipeline,
        data=data,
        fold=fold,
        run=run,
        identity=identity,
        device=device,
        dist=dist,
        reporter=reporter,
        stop=stop,
        seed=seed,
        train_rows=train_rows,
        valid_rows=valid_rows,
        truth=read_rows(data.points, valid_rows),
        loader=loader,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        ema=ema,
        batch_transform=batch_transform,
    )
    return built, state


def _resume(last_path: Path, model, optimizer, ema, identity: Identity, fold: int, reporter: Reporter) -> _FoldState:
    """Load ``last.pt`` into the model, optimiser and EMA when there is one; the fold's state so far."""
    if not last_path.is_file():
        return _FoldState()
    saved = LastCheckpoint.load(last_path)
    model.load_state_dict(saved.model)
    optimizer.load_state_dict(saved.optimizer)
    if ema is not None and saved.ema is not None:
        ema.load_state_dict(saved.ema)
    # The other numerics the checkpoint was trained with (--allow-mixed), its own last.
    mixed = list(saved.mixed_numerics)
    numerics = saved.identity.numerics
    if numerics is not None and numerics != identity.numerics and numerics not in mixed:
        mixed.append(numerics)
    state = _FoldState(
        history=saved.history,
        best_valid_mse=saved.best_valid_mse,
        best_epoch=saved.best_epoch,
        elapsed=saved.elapsed,
        start_epoch=saved.next_epoch,
        partial=saved.partial,
        mixed=mixed,
    )
    partial = saved.partial
    where = f"epoch {state.start_epoch + 1} step {partial.next_step}" if partial else f"epoch {state.start_epoch}"
    also = f" (trained so far with {', '.join(n.describe() for n in mixed)}: --allow-mixed)" if mixed else ""
    reporter.message(f"fold {fold}: resuming after {where}{also}")
    return state


def _run_epoch(f: _Fold, state: _FoldState, epoch: int, epoch_start: float) -> EpochProgress:
    """Train one epoch (from where a stop inside it left off).

    Raises:
        Interrupted: ``stop`` was set inside the epoch; ``last.pt`` was saved at that step first.
    """
    cfg = f.pipeline.train
    progress, state.partial = state.partial or EpochProgress(), None
    f.sampler.set_epoch(epoch, skip=progress.next_step * cfg.batch_size)
    f.reporter.start_epoch(f.fold, epoch, cfg.epochs, f.steps_per_epoch)
    progress = train_one_epoch(
        f.train_model,
        f.loader,
        f.optimizer,
        f.pipeline,
        f.device,
        epoch,
        f.steps_per_epoch,
        f.ema,
        f.reporter,
        f.batch_transform,
        progress=progress,
        should_stop=(lambda: bool(f.stop)) if not f.dist.enabled else None,
        seed=f.seed + 1000 * f.dist.rank,
        fold=f.fold,
    )
    if progress.next_step < f.steps_per_epoch:  # stopped by a signal at a step boundary
        if f.dist.is_main:
            state.elapsed += time.perf_counter() - epoch_start
            _save_last(f, state, epoch, progress)
        raise _interrupted(f, epoch, progress.next_step)
    return progress


def _validate(f: _Fold, epoch: int, progress: EpochProgress) -> EpochStats:
    """The epoch's statistics, with the validation MSE and NME of the (EMA) model in original pixels, without TTA.

    Raises:
        NonFiniteLoss: the validation predictions are not finite.
    """
    valid_start = time.perf_counter()
    original = predict_original(f.eval_model, f.data.train_cache, f.valid_rows, f.pipeline, f.device, None)
    scores = landmark_scores(original, f.truth, f.data.nme_points)
    if not np.isfinite(scores.mse):
        raise NonFiniteLoss(
            f"fold {f.fold} epoch {epoch + 1}: validation predictions are not finite; lower "
            f"optim.lr (now {f.pipeline.optim.lr:g}) or set optim.clip_grad"
        )
    return EpochStats(
        epoch=epoch,
        epochs=f.pipeline.train.epochs,
        train_loss=progress.mean_loss,
        train_images=progress.images,
        train_seconds=progress.seconds,
        valid_mse=scores.mse,
        valid_nme=scores.nme,
        valid_seconds=time.perf_counter() - valid_start,
        images_per_second=progress.images * f.dist.world_size / max(progress.seconds, 1e-9),
    )


def _keep_epoch(f: _Fold, state: _FoldState, epoch: int, stats: EpochStats, epoch_start: float) -> None:
    """Record a finished epoch: ``best.pt`` when it is the best so far, its statistics, then ``last.pt``."""
    is_best = stats.valid_mse < state.best_valid_mse
    if is_best:
        state.best_valid_mse, state.best_epoch = stats.valid_mse, epoch
        BestCheckpoint(f.eval_model.state_dict(), epoch, stats.valid_mse, f.identity).save(f.best_path)
    state.elapsed += time.perf_counter() - epoch_start
    state.history.append(stats)
    _save_last(f, state, epoch, None)
    f.reporter.end_epoch(f.fold, epoch, stats.model_dump() | {"is_best": is_best})


def _save_last(f: _Fold, state: _FoldState, epoch: int, progress: EpochProgress | None) -> None:
    LastCheckpoint(
        model=f.model.state_dict(),
        optimizer=f.optimizer.state_dict(),
        ema=f.ema.state_dict() if f.ema is not None else None,
        epoch=epoch,
        partial=progress,
        history=state.history,
        best_valid_mse=state.best_valid_mse,
        best_epoch=state.best_epoch,
        elapsed=state.elapsed,
        identity=f.identity,
        mixed_numerics=state.mixed,
    ).save(f.last_path)


def _interrupted(f: _Fold, epoch: int, step: int | None) -> Interrupted:
    where = f"epoch {epoch + 1}" + (f" step {step}" if step is not None else " end")
    return Interrupted(
        f"{f.stop.name} in fold {f.fold} {where}: saved {f.last_path}; rerun the same command to resume",
        f.stop.signum,
    )


def _finish_fold(f: _Fold, state: _FoldState) -> FoldSummary | None:
    """Predict the fold's OOF and test rows with the best epoch's weights and the run's TTA, and write them with
    the summary (main process); the other processes return None."""
    check_in_sync(f.model, f.dist)
    summary = None
    if f.dist.is_main:
        pipeline, data, fold = f.pipeline, f.data, f.fold
        f.model.load_state_dict(BestCheckpoint.load(f.best_path).model)
        tta = data.flip_perm if pipeline.tta.hflip else None
        with f.reporter.progress(len(f.valid_rows), f"fold {fold} OOF predictions") as advance:
            oof = predict_original(f.model, data.train_cache, f.valid_rows, pipeline, f.device, tta, advance)
        test_rows = np.arange(len(data.test_cache.transforms()))
        with f.reporter.progress(len(test_rows), f"fold {fold} test predictions") as advance:
            test = predict_original(f.model, data.test_cache, test_rows, pipeline, f.device, tta, advance)
        images = sum(h.train_images for h in state.history) * f.dist.world_size
        seconds = sum(h.train_seconds for h in state.history)
        scores = landmark_scores(oof, f.truth, data.nme_points)
        summary = FoldSummary(
            fold=fold,
            mse=scores.mse,
            nme=scores.nme,
            failure_rate=scores.failure_rate,
            best_epoch=state.best_epoch,
            best_valid_mse_no_tta=state.best_valid_mse,
            epochs=pipeline.train.epochs,
            wall_seconds=state.elapsed,
            images_per_second=images / max(seconds, 1e-9),
            n_train=len(f.train_rows),
            n_valid=len(f.valid_rows),
            history=tuple(state.history),
            identity=f.identity,
            world_size=f.dist.world_size,
            mixed_numerics=tuple(state.mixed),
        )
        f.run.write_fold(fold, summary, oof, test)  # the summary last: its presence marks the fold finished
        f.last_path.unlink(missing_ok=True)
    barrier(f.dist)
    return summary
