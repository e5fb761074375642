"""``kit bench``: images/s of the input pipeline alone, the model step alone, and the full training loop."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from kit.config import Pipeline
from kit.data.competition import Competition
from kit.data.derived import flip_permutation
from kit.data.gpu_augment import make_batch_transform
from kit.data.prepare import prepare_crops
from kit.data.tensors import autocast, prepare_input
from kit.models import create_model
from kit.train.engine import make_optimizer, train_one_epoch
from kit.train.fold import FoldData, train_loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(loader, n_batches: int):
    """``n_batches`` batches, going over ``loader`` as many times as needed (small demo data sets)."""
    served = 0
    while served < n_batches:
        for batch in loader:
            yield batch
            served += 1
            if served == n_batches:
                return


def bench(
    pipeline: Pipeline, data_dir: str | Path, batches: int = 20, warmup: int = 3, workspace: str | Path | None = None
) -> dict:
    """Measure on the current device; returns images/s per stage and the peak device memory (CUDA)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    comp = Competition.load(data_dir, workspace=workspace)
    size, margin, pad = pipeline.input.size, pipeline.input.margin, pipeline.input.pad
    data = FoldData(
        prepare_crops(comp, "train", size, margin, pad),
        prepare_crops(comp, "test", size, margin, pad),
        np.asarray(comp.train.points, np.float32),
        np.zeros(len(comp.train), np.int64),
        flip_permutation(comp, pipeline),
    )
    batch_size = pipeline.train.batch_size
    results: dict = {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "batch_size": batch_size,
        "input_size": size,
        "n_points": comp.n_points,
    }

    # 1. Input pipeline alone: what the DataLoader plus the device augmentation delivers.
    loader, _ = train_loader(pipeline, data, np.arange(len(data.points)), device, seed=0)
    model = create_model(pipeline, comp.n_points).to(device)
    if pipeline.train.channels_last:
        model.to(memory_format=torch.channels_last)
    transform = make_batch_transform(
        pipeline.augment,
        size,
        model.mean,
        model.std,
        pipeline.train.channels_last,
        data.flip_perm,
        device,
        0,
        geometry_on_device=pipeline.augment.gpu,
    )
    images, start, seen = 0, None, 0
    for x, points, _ in _cycle(loader, warmup + batches):
        transform(x.to(device, non_blocking=True), points.to(device))
        seen += 1
        if seen == warmup:
            _sync(device)
            start = time.perf_counter()
        elif seen > warmup:
            images += len(x)
    _sync(device)
    results["input_images"] = images
    results["input_images_per_second"] = images / (time.perf_counter() - start) if start and images else float("nan")

    # 2. Model step alone: random uint8 batches already on the device.
    optimizer = make_optimizer(model, pipeline.optim, device)
    x_uint8 = torch.randint(0, 255, (batch_size, size, size, 3), dtype=torch.uint8, device=device)
    target = torch.rand(batch_size, comp.n_points, 2, device=device) * size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    for step in range(warmup + batches):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        x = prepare_input(x_uint8, model, device, pipeline.train.channels_last)
        with autocast(device, pipeline.train.amp):
            outputs = model(x)
        loss = model.loss(outputs, target, progress=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    results["model_images_per_second"] = batches * batch_size / (time.perf_counter() - start)
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident memory (Linux reports KiB)
        results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # 3. The full loop: the real train_one_epoch over real batches.
    capped = pipeline.model_copy(update={"train": pipeline.train.model_copy(update={"max_train_batches": batches})})
    warm = capped.model_copy(update={"train": capped.train.model_copy(update={"max_train_batches": warmup})})
    train_one_epoch(model, _cycle(loader, warmup), optimizer, warm, device, 0, batches, batch_transform=transform)
    _sync(device)
    stats = train_one_epoch(
        model, _cycle(loader, batches), optimizer, capped, device, 0, batches, batch_transform=transform
    )
    results["model_images"] = batches * batch_size
    results["full_loop_images"] = stats.images
    results["full_loop_images_per_second"] = stats.images / stats.seconds
    results["full_vs_model"] = results["full_loop_images_per_second"] / results["model_images_per_second"]
    return results
