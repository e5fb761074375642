"""The pieces of a training loop every model family shares: inputs, optimiser, schedule, epochs, prediction."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from kit.config import OptimConfig, Pipeline
from kit.models.base import LandmarkModel
from kit.predict.inputs import autocast, prepare_input
from kit.progress import Reporter


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
) -> dict:
    """One pass over ``loader``; returns mean loss, images and seconds. ``model`` may be wrapped in DDP.

    ``batch_transform(images, points)`` takes the batch on the device (uint8 images) and returns the model input
    and target points; the default only normalises (augmentation happened in the DataLoader).
    """
    core: LandmarkModel = getattr(model, "module", model)
    cfg, train = pipeline.optim, pipeline.train
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    frozen = epoch < train.freeze_backbone_epochs
    model.train()
    if frozen:
        core.backbone.eval()  # frozen means frozen BatchNorm statistics too
    losses, images, start = [], 0, time.perf_counter()
    for batch_index, (x, target, _) in enumerate(loader):
        if train.max_train_batches is not None and batch_index >= train.max_train_batches:
            break
        step = epoch * steps_per_epoch + batch_index
        set_lr(optimizer, lr_factor(step, total_steps, warmup_steps, cfg), frozen)
        target = target.to(device, non_blocking=True)
        if batch_transform is None:
            x = prepare_input(x, core, device, train.channels_last)
        else:
            x, target = batch_transform(x.to(device, non_blocking=True), target)
        with autocast(device, train.amp):
            outputs = model(x)
        loss = core.loss(outputs, target, progress=(epoch + batch_index / steps_per_epoch) / train.epochs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update(core, step=step)
        losses.append(loss.detach())
        images += len(x)
        if reporter is not None:
            reporter.batch(float(losses[-1]), images / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return {"train_loss": mean_loss, "train_images": images, "train_seconds": seconds}
