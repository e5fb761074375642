"""The training step: no device read in the step, only every ``train.log_every`` steps and at the epoch's end."""

import sys

import numpy as np
import pytest
import torch

from kit.config import pipeline_from_dict
from kit.data.gpu_augment import make_batch_transform
from kit.models import create_model
from kit.train.engine import make_optimizer, train_one_epoch

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu")


def _batches(steps: int, batch: int = 4, size: int = 32, n_points: int = 10):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8, generator=g)
        yield images, torch.rand(batch, n_points, 2, generator=g) * (size - 1), torch.arange(batch)


@pytest.mark.parametrize("steps", [8, 16])
def test_steps_do_not_read_the_device(monkeypatch, steps):
    pipeline = pipeline_from_dict(
        {
            "name": "t",
            "model": {"backbone": "test_resnet"},
            "input": {"size": 32},
            "train": {"batch_size": 4, "epochs": 1, "log_every": 1000, "channels_last": False},
        }
    )
    device = torch.device("cpu")
    model = create_model(pipeline, 10)
    optimizer = make_optimizer(model, pipeline.optim, device)
    transform = make_batch_transform(pipeline.augment, 32, model.mean, model.std, False, None, device, 0, False)
    reads = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "/kit/" in caller:
                reads.append((_name, caller, sys._getframe(1).f_lineno))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    progress = train_one_epoch(model, _batches(steps), optimizer, pipeline, device, 0, steps, batch_transform=transform)
    monkeypatch.undo()
    assert progress.next_step == steps and np.isfinite(progress.mean_loss)
    # Whatever the number of steps: one read of the non-finite flag and one of the loss sum, at the epoch's end.
    assert len(reads) == 2, reads
