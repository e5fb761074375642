import pytest
import torch

from kit.config import LossConfig
from kit.losses import adaptive_wing, coordinate_loss, gaussian_map_kl, wing


@pytest.mark.parametrize("name", ["mse", "l1", "smooth_l1", "wing", "adaptive_wing"])
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
