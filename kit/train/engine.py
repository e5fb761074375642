"""The pieces of a training loop every model family shares: inputs, optimiser, schedule, epochs, prediction."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from kit.checkpoint import EpochProgress
from kit.config import OptimConfig, Pipeline
from kit.data.tensors import autocast, prepare_input
from kit.errors import KitError
from kit.models.base import LandmarkModel
from kit.progress import Reporter
from kit.train.sampling import BATCH, TORCH, stream_seed


def make_optimizer(model: LandmarkModel, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Two parameter groups: the pretrained backbone at ``lr x backbone_lr_mult``, the rest at ``lr``."""
    groups = [
        {"params": model.backbone_parameters(), "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"},
        {"params": model.head_parameters(), "lr": cfg.lr, "name": "head"},
    ]
    for group in groups:
        group["base_lr"] = group["lr"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay, amsgrad=True, **fused)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, **fused)


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float, backbone_frozen: bool) -> None:
    for group in optimizer.param_groups:
        frozen = backbone_frozen and group.get("name") == "backbone"
        group["lr"] = 0.0 if frozen else group["base_lr"] * factor


class NonFiniteLoss(KitError):
    """Training produced a non-finite loss or gradient norm."""


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    pipeline: Pipeline,
    device: torch.device,
    epoch: int,
    steps_per_epoch: int,
    ema=None,
    reporter: Reporter | None = None,
    batch_transform: Callable | None = None,
    progress: EpochProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    fold: int = 0,
) -> EpochProgress:
    """Train over ``loader`` from ``progress.next_step`` until the epoch ends or ``should_stop()``; ``model`` may be
    wrapped in DDP.

    ``batch_transform(images, points)`` takes the batch on the device (uint8 images) and returns the model input
    and target points; the default only normalises. The torch generator (dropout) and the transform's generator
    (``reseed``) are seeded from (seed, epoch, step) at every step, so a resumed epoch draws what an uninterrupted
    one would. The loss is read back every ``train.log_every`` steps (and at the end), with the check that every
    loss and gradient norm so far was finite: no host sync in the other steps.

    Raises:
        NonFiniteLoss: naming fold, epoch and the first non-finite step, with a hint.
    """
    core: LandmarkModel = getattr(model, "module", model)
    cfg, train = pipeline.optim, pipeline.train
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    frozen = epoch < train.freeze_backbone_epochs
    progress = dataclasses.replace(progress) if progress is not None else EpochProgress()
    model.train()
    if frozen:
        core.backbone.eval()  # frozen means frozen BatchNorm statistics too
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    start, steps, images, last_loss = time.perf_counter(), 0, 0, None

    def check_and_report() -> None:
        nonlocal last_loss
        bad = int(first_bad)  # the one device read: loss, finiteness and progress together
        if bad >= 0:
            raise NonFiniteLoss(
                f"fold {fold} epoch {epoch + 1} step {bad + 1}: the loss or gradient norm is not finite; lower "
                f"optim.lr (now {cfg.lr:g}) or set optim.clip_grad; the last finite checkpoint is kept"
            )
        if reporter is not None and last_loss is not None and pending:
            reporter.batch(float(last_loss), images / max(time.perf_counter() - start, 1e-9), advance=pending)

    pending = 0
    for batch_index, (x, target, _) in enumerate(loader):
        step_in_epoch = progress.next_step + batch_index
        if step_in_epoch >= steps_per_epoch:
            break
        step = epoch * steps_per_epoch + step_in_epoch
        torch.manual_seed(stream_seed(seed, epoch, step_in_epoch, TORCH))
        if batch_transform is not None and hasattr(batch_transform, "reseed"):
            batch_transform.reseed(stream_seed(seed, epoch, step_in_epoch, BATCH))
        set_lr(optimizer, lr_factor(step, total_steps, warmup_steps, cfg), frozen)
        target = target.to(device, non_blocking=True)
        if batch_transform is None:
            x = prepare_input(x, core, device, train.channels_last)
        else:
            x, target = batch_transform(x.to(device, non_blocking=True), target)
        with autocast(device, train.amp):
            outputs = model(x)
        loss = core.loss(outputs, target, progress=(epoch + step_in_epoch / steps_per_epoch) / train.epochs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = torch.isfinite(loss.detach())
        if cfg.clip_grad:
            finite &= torch.isfinite(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
        first_bad = torch.where(~finite & (first_bad < 0), step_in_epoch, first_bad)
        optimizer.step()
        if ema is not None:
            ema.update(core, step=step)
        last_loss = loss.detach()
        loss_sum += last_loss.double()
        steps += 1
        pending += 1
        images += len(x)
        if steps % train.log_every == 0:
            check_and_report()
            pending = 0
        if should_stop is not None and should_stop():
            break
    check_and_report()
    return EpochProgress(
        next_step=progress.next_step + steps,
        loss_sum=progress.loss_sum + float(loss_sum),
        images=progress.images + images,
        seconds=progress.seconds + time.perf_counter() - start,
    )
