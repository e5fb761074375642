"""SimCC codec: bin convention, Gaussian label targets, KL loss and the decoders on clean and noisy logits."""

import pytest
import torch

from kit.codecs.simcc import (
    DECODERS,
    SimCCCodec,
    argmax_1d,
    dark_1d,
    from_bins,
    gaussian_log_targets,
    kl_divergence,
    local_soft_argmax_1d,
    soft_argmax_1d,
    to_bins,
)
from kit.errors import KitError

SIZE = 64


def _points(codec: SimCCCodec, n_images: int = 3, n_points: int = 20, seed: int = 0) -> torch.Tensor:
    """Random sub-pixel input coordinates at least 4 sigma (bins) from the edges."""
    g = torch.Generator().manual_seed(seed)
    margin = (4 * codec.sigma + 1) / codec.split_ratio
    return margin + torch.rand(n_images, n_points, 2, generator=g) * (SIZE - 1 - 2 * margin)


def test_bin_convention_round_trip_and_flip():
    x = torch.tensor([-0.5, 0.0, 1.25, 31.0, 63.0, 63.5])
    for k in (1.0, 2.0, 3.0):
        u = to_bins(x, k)
        assert torch.allclose(from_bins(u, k), x)
        n = SIZE * k
        # A mirrored input coordinate is the mirrored bin coordinate, and the input's edges are the bins' edges.
        assert torch.allclose(to_bins(SIZE - 1 - x, k), n - 1 - u)
        assert to_bins(torch.tensor([-0.5, SIZE - 0.5]), k).tolist() == [-0.5, n - 0.5]
    # Bin i at split ratio 2 is centred on input coordinate (i + 0.5) / 2 - 0.5.
    assert from_bins(torch.tensor([0.0, 1.0, 10.0]), 2.0).tolist() == [-0.25, 0.25, 4.75]


def test_targets_are_normalised_gaussians_laid_out_like_the_outputs():
    codec = SimCCCodec(SIZE, split_ratio=2.0, sigma=2.0)
    points = torch.tensor([[[10.0, 40.0], [-30.0, 100.0]]])  # the second point is outside the crop
    targets = codec.encode(points)
    assert targets.shape == (1, 2, 2 * codec.bins) and torch.isfinite(targets).all()
    x_bins, y_bins = targets[..., : codec.bins], targets[..., codec.bins :]
    torch.testing.assert_close(x_bins.sum(-1), torch.ones(1, 2))
    torch.testing.assert_close(y_bins.sum(-1), torch.ones(1, 2))
    assert int(x_bins[0, 0].argmax()) == 20 and int(y_bins[0, 0].argmax()) == 80
    # Outside the bins the mass sits on the nearest edge bin.
    assert float(x_bins[0, 1, 0]) > 0.99 and float(y_bins[0, 1, -1]) > 0.99


def test_kl_loss_is_zero_at_the_target_and_positive_elsewhere():
    codec = SimCCCodec(SIZE, split_ratio=2.0, sigma=2.0)
    points = _points(codec)
    perfect = torch.log(codec.encode(points))
    assert float(codec.loss(perfect, points)) == pytest.approx(0.0, abs=1e-5)
    assert float(codec.loss(perfect + 3.0, points)) == pytest.approx(0.0, abs=1e-5)  # softmax ignores constants
    assert float(codec.loss(perfect, points + 1.0)) > 0.05
    log_t = gaussian_log_targets(torch.tensor([5.0]), 2.0, 32)
    uniform = torch.zeros(1, 32)
    expected = (log_t.exp() * log_t).sum() + torch.log(torch.tensor(32.0))  # log n - entropy
    assert float(kl_divergence(uniform, log_t)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("split_ratio", [1.0, 2.0, 2.5])
def test_decoders_recover_the_encoded_points(decoder, split_ratio):
    codec = SimCCCodec(SIZE, split_ratio=split_ratio, sigma=2.0, decoder=decoder)
    points = _points(codec)
    decoded = codec.decode(torch.log(codec.encode(points)))
    error = (decoded - points).abs().max()
    # argmax is exact to half a bin; the sub-pixel decoders to a small fraction of a pixel.
    assert error <= (0.5 / split_ratio + 1e-4 if decoder == "argmax" else 0.01), error


def test_local_decoder_resists_a_far_outlier_that_soft_argmax_does_not():
    n = 128
    logits = gaussian_log_targets(torch.tensor([40.3]), 2.0, n).clone()
    logits[..., 120] = logits.max() - 0.5  # a second, narrow mode far away
    assert abs(float(local_soft_argmax_1d(logits, window=11)) - 40.3) < 0.02
    assert abs(float(dark_1d(logits)) - 40.3) < 0.02
    assert abs(float(soft_argmax_1d(logits)) - 40.3) > 5
    assert float(argmax_1d(logits)) == 40.0


def test_decoders_at_the_edges_and_on_noise_stay_in_range():
    n = 64
    edge = gaussian_log_targets(torch.tensor([0.0, 63.0]), 1.5, n)
    for fn in (dark_1d, lambda x: local_soft_argmax_1d(x, 7), soft_argmax_1d):
        out = fn(edge)
        assert torch.isfinite(out).all() and (out >= -0.5).all() and (out <= n - 0.5).all()
    noisy = torch.randn(50, n, generator=torch.Generator().manual_seed(0))
    for fn in (dark_1d, local_soft_argmax_1d):
        out = fn(noisy)
        assert torch.isfinite(out).all() and ((out - argmax_1d(noisy)).abs() <= 1.5).all()


def test_decode_is_flip_equivariant():
    codec = SimCCCodec(SIZE, split_ratio=2.0, sigma=2.0)
    logits = torch.randn(2, 5, 2 * codec.bins, generator=torch.Generator().manual_seed(1))
    mirrored = torch.cat([logits[..., : codec.bins].flip(-1), logits[..., codec.bins :]], dim=-1)
    for decoder in DECODERS:
        a, b = codec.decode(logits, decoder), codec.decode(mirrored, decoder)
        torch.testing.assert_close(b[..., 0], SIZE - 1 - a[..., 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(b[..., 1], a[..., 1])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"split_ratio": 1.3}, "model.simcc.split_ratio"),  # 64 x 1.3 bins is not whole
        ({"sigma": 0.0}, "model.simcc.sigma"),
        ({"decoder": "nearest"}, "model.simcc.decoder"),
        ({"window": 4}, "model.simcc.window"),
    ],
)
def test_invalid_settings_name_the_key(kwargs, key):
    with pytest.raises(KitError, match=key):
        SimCCCodec(SIZE, **kwargs)
