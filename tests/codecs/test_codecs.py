"""Heatmap codec: pixel convention, Gaussian targets and the decoders on clean and noisy synthetic maps."""

import pytest
import torch

from kit.codecs.heatmap import (
    DECODERS,
    HeatmapCodec,
    argmax_decode,
    dark_decode,
    gaussian_factors,
    gaussian_targets,
    local_soft_argmax,
    soft_argmax,
    to_heatmap_coords,
    to_input_coords,
)
from kit.errors import KitError

SIZE = 64


def _points(n_images: int, n_points: int, stride: int, sigma: float, seed: int = 0) -> torch.Tensor:
    """Random sub-pixel input coordinates at least 3 sigma (heatmap pixels) plus one heatmap pixel from the edges."""
    g = torch.Generator().manual_seed(seed)
    margin = (3 * sigma + 1) * stride
    return margin + torch.rand(n_images, n_points, 2, generator=g) * (SIZE - 1 - 2 * margin)


def _perfect_logits(codec: HeatmapCodec, points: torch.Tensor) -> torch.Tensor:
    side = SIZE // codec.stride
    return torch.log(codec.encode(points, (side, side)).clamp_min(1e-30))


def test_coordinate_convention_round_trip_and_flip():
    x = torch.tensor([0.0, 1.5, 31.0, 63.0])
    for stride in (1, 2, 4):
        u = to_heatmap_coords(x, stride)
        assert torch.allclose(to_input_coords(u, stride), x)
        # A mirrored input pixel is the mirrored heatmap pixel.
        assert torch.allclose(to_heatmap_coords(SIZE - 1 - x, stride), SIZE // stride - 1 - u)
    # The first heatmap pixel at stride 4 covers input pixels 0..3, so its centre is 1.5.
    assert float(to_input_coords(torch.tensor(0.0), 4)) == 1.5


def test_gaussian_targets_peak_and_separability():
    coords = torch.tensor([[[3.0, 5.0], [2.5, 7.25]]])
    maps = gaussian_targets(coords, 1.5, 12, 10)
    assert maps.shape == (1, 2, 12, 10)
    assert float(maps[0, 0, 5, 3]) == pytest.approx(1.0)
    assert int(maps[0, 0].flatten().argmax()) == 5 * 10 + 3
    gy, gx = gaussian_factors(coords, 1.5, 12, 10)
    assert torch.allclose(maps, gy[..., :, None] * gx[..., None, :])
    assert float(maps[0, 1].max()) < 1.0  # between pixels the sampled peak is lower: nothing is snapped


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("kind", ["logits", "heatmap"])
def test_encode_decode_round_trip_sub_pixel(stride, kind):
    codec = HeatmapCodec(stride=stride, sigma=1.5, outputs=kind)
    points = _points(4, 60, stride, codec.sigma, seed=stride)
    side = SIZE // stride
    maps = _perfect_logits(codec, points) if kind == "logits" else codec.encode(points, (side, side))
    for decoder in ("soft_argmax", "local_soft_argmax", "dark"):
        error = (codec.decode(maps, decoder) - points).abs().max()
        assert error < 0.05, (decoder, float(error))
    # argmax returns the centre of the peak's heatmap pixel.
    assert (codec.decode(maps, "argmax") - points).abs().max() <= stride / 2 + 1e-4


def test_local_soft_argmax_recentring_removes_window_bias():
    codec = HeatmapCodec(stride=1, sigma=1.5)
    points = _points(2, 50, 1, codec.sigma)
    logits = _perfect_logits(codec, points)
    coords = to_heatmap_coords(points, 1)
    fixed = (local_soft_argmax(logits, window=5, iterations=0) - coords).abs().max()
    recentred = (local_soft_argmax(logits, window=5, iterations=5) - coords).abs().max()
    assert fixed > 0.1  # a box fixed on the maximum pixel pulls towards it
    assert recentred < 0.01


@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_decoders_on_noisy_maps(noise):
    torch.manual_seed(0)
    stride, sigma = 4, 1.5
    codec = HeatmapCodec(stride=stride, sigma=sigma, dark_blur=1.0, outputs="heatmap")
    points = _points(8, 50, stride, sigma)
    side = SIZE // stride
    heat = codec.encode(points, (side, side))
    noisy = heat + noise * torch.randn_like(heat)
    errors = {d: float((codec.decode(noisy, d) - points).norm(dim=-1).mean()) for d in DECODERS}
    assert all(e == e for e in errors.values())  # no NaN
    # Mean distances in input pixels; argmax alone is off by about 0.4 stride.
    assert errors["argmax"] < 2.5
    assert errors["local_soft_argmax"] < 8 * noise
    assert errors["dark"] < 8 * noise
    assert errors["local_soft_argmax"] < errors["argmax"] / 3
    assert errors["dark"] < errors["argmax"] / 3


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_are_flip_equivariant(decoder):
    torch.manual_seed(1)
    maps = torch.randn(2, 6, 16, 16)
    for kind in ("logits", "heatmap"):
        codec = HeatmapCodec(stride=4, decoder=decoder, outputs=kind)
        plain, mirrored = codec.decode(maps), codec.decode(torch.flip(maps, dims=[-1]))
        assert torch.allclose(mirrored[..., 0], SIZE - 1 - plain[..., 0], atol=1e-3), kind
        assert torch.allclose(mirrored[..., 1], plain[..., 1], atol=1e-3), kind


def test_dark_keeps_argmax_where_the_peak_is_not_concave():
    logits = torch.zeros(1, 1, 8, 8)  # flat: no curvature to step along
    assert torch.equal(dark_decode(logits), argmax_decode(logits))
    border = torch.full((1, 1, 8, 8), -5.0)
    border[0, 0, 0, 0] = 0.0  # peak in a corner: replicated border, no step outside one pixel
    out = dark_decode(border)
    assert torch.isfinite(out).all() and (out - argmax_decode(border)).abs().max() <= 1


def test_soft_argmax_and_local_soft_argmax_are_differentiable():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    (soft_argmax(logits).sum() + local_soft_argmax(logits, 3, 2).sum()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_decode_is_float32_under_bf16_autocast():
    codec = HeatmapCodec(stride=4, sigma=1.5)
    points = _points(2, 20, 4, 1.5)
    logits = _perfect_logits(codec, points)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = codec.decode(logits.bfloat16(), "soft_argmax")
    assert decoded.dtype == torch.float32
    assert (decoded - points).abs().max() < 0.2  # only the bf16 rounding of the logits themselves


def test_sigma_schedule():
    codec = HeatmapCodec(sigma=3.0, sigma_end=1.0)
    assert codec.sigma_at(0.0) == 3.0 and codec.sigma_at(0.5) == 2.0 and codec.sigma_at(1.0) == 1.0
    assert HeatmapCodec(sigma=2.0).sigma_at(0.7) == 2.0


def test_codec_rejects_bad_settings():
    with pytest.raises(KitError, match="window"):
        HeatmapCodec(window=4)
    with pytest.raises(KitError, match="stride"):
        HeatmapCodec(stride=3)
    with pytest.raises(KitError, match="decoder"):
        HeatmapCodec(decoder="mean")
