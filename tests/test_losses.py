"""Landmark losses: the coordinate loss the pipeline names is the one training computes, and each loss's shape."""

import pytest
import torch
import torch.nn.functional as F

from kit.config import LossConfig, pipeline_from_dict
from kit.losses import adaptive_wing, coordinate_loss, gaussian_map_kl, wing
from kit.models import create_model
from kit.models.regression import to_normalised

NAMES = ["mse", "l1", "smooth_l1", "wing", "adaptive_wing"]
SIZE = 32


def _reference(name: str, pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Each coordinate loss written out on its own, to compare the dispatch against."""
    error = pred - target
    if name == "mse":
        return error.square().mean()
    if name == "l1":
        return error.abs().mean()
    if name == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=cfg.smooth_l1_beta)
    if name == "wing":
        return wing(pred, target, cfg.wing_w, cfg.wing_epsilon)
    scaled = error / cfg.awing_omega
    zero = torch.zeros_like(scaled)
    return adaptive_wing(scaled, zero, cfg.awing_alpha, cfg.awing_omega, cfg.awing_epsilon, cfg.awing_theta)


def _pred_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 5, 2, generator=g) * (SIZE - 1)
    # Errors from sub-pixel to beyond wing_w, so that no two losses agree by accident.
    return target + torch.randn(2, 5, 2, generator=g) * 6, target


@pytest.mark.parametrize("name", NAMES)
def test_training_computes_the_coordinate_loss_the_pipeline_names(name):
    pred, target = _pred_and_target()
    pipeline = pipeline_from_dict(
        {"name": "x", "model": {"backbone": "test_resnet"}, "input": {"size": SIZE}, "loss": {"name": name}}
    )
    model = create_model(pipeline, n_points=5)  # the model's loss is what the training loop calls
    picked = model.loss(to_normalised(pred, SIZE), target, progress=0.5)
    references = {other: float(_reference(other, pred, target, pipeline.loss)) for other in NAMES}
    assert float(picked) == pytest.approx(references[name], rel=1e-5)
    assert float(coordinate_loss(pred, target, pipeline.loss)) == pytest.approx(references[name], rel=1e-5)
    others = [other for other in NAMES if other != name]
    assert all(float(picked) != pytest.approx(references[other], rel=1e-3) for other in others), references


@pytest.mark.parametrize("name", NAMES)
def test_coordinate_losses_zero_at_target_and_differentiable(name):
    target = torch.rand(2, 5, 2) * 64
    assert coordinate_loss(target.clone(), target, LossConfig(name=name)).item() == pytest.approx(0.0, abs=1e-6)
    pred = (target + torch.randn_like(target)).requires_grad_()
    loss = coordinate_loss(pred, target, LossConfig(name=name))
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(pred.grad).all()


def test_wing_is_log_for_small_and_linear_for_large_errors():
    zero = torch.zeros(1)
    small, large = wing(torch.tensor([1.0]), zero), wing(torch.tensor([100.0]), zero)
    assert small.item() == pytest.approx(10 * torch.log1p(torch.tensor(0.5)).item())
    # continuous at w and slope 1 beyond it
    assert (wing(torch.tensor([101.0]), zero) - large).item() == pytest.approx(1.0, rel=1e-5)
    assert wing(torch.tensor([10.0 - 1e-4]), zero).item() == pytest.approx(
        wing(torch.tensor([10.0]), zero).item(), rel=1e-4
    )


def test_adaptive_wing_continuous_at_theta_and_weighted():
    y = torch.full((3,), 0.3)
    below, above = adaptive_wing(y + 0.5 - 1e-5, y), adaptive_wing(y + 0.5 + 1e-5, y)
    assert below.item() == pytest.approx(above.item(), rel=1e-3)
    weight = torch.full((3,), 2.0)
    assert adaptive_wing(y + 0.2, y, weight=weight).item() == pytest.approx(2 * adaptive_wing(y + 0.2, y).item())


def test_gaussian_map_kl_zero_on_its_target_positive_elsewhere_finite_off_the_map():
    coords = torch.tensor([[[5.3, 7.6], [2.0, 9.5]]])
    grid_y, grid_x = torch.arange(12.0), torch.arange(10.0)
    logits = -((grid_y - coords[..., 1:]) ** 2).unsqueeze(-1) / 2 - ((grid_x - coords[..., :1]) ** 2).unsqueeze(-2) / 2
    assert float(gaussian_map_kl(logits, coords, 1.0).abs().max()) < 1e-4
    assert float(gaussian_map_kl(logits, coords + 1.0, 1.0).min()) > 0.1
    far = gaussian_map_kl(logits, coords + 100.0, 1.0)  # all target mass on the edge pixels, never NaN
    assert torch.isfinite(far).all() and float(far.min()) > 1.0
