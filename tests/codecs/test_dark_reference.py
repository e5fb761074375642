"""kit's DARK decoder against a reference written here in plain numpy after mmpose's ``refine_keypoints_dark``.

The reference is independent of kit: its own maps, argmax, blur and Newton step. It follows mmpose: modulate the
whole heatmap with OpenCV's Gaussian kernel of the size matched to the training sigma (zero outside the map, peak
restored), floor at 1e-10, log, then one Newton step at the integer argmax with derivatives on a 5 x 5
neighbourhood, only where that neighbourhood lies inside the map and the Hessian is invertible.
``benchmarks/dark_vs_reference.py`` imports it.
"""

import numpy as np
import pytest
import torch

from kit.codecs.heatmap import HeatmapCodec


def reference_kernel_size(sigma: float) -> int:
    """The odd kernel size whose OpenCV default sigma is nearest ``sigma``: mmpose's 11 at sigma 2, 17 at sigma 3."""
    return 2 * round((sigma - 0.8) / 0.3 + 1) + 1


def _blur(heatmaps: np.ndarray, size: int) -> np.ndarray:
    """mmpose's ``gaussian_blur``: OpenCV's ``GaussianBlur(ksize, 0)`` of each zero-padded map, peak restored."""
    sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8  # OpenCV's sigma for a kernel size
    r = size // 2
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    h, w = heatmaps.shape[-2:]
    padded = np.pad(heatmaps, [(0, 0)] * (heatmaps.ndim - 2) + [(r, r), (r, r)])
    rows = sum(t * padded[..., :, i : i + w] for i, t in enumerate(taps))
    out = sum(t * rows[..., i : i + h, :] for i, t in enumerate(taps))
    return out * (heatmaps.max((-2, -1), keepdims=True) / out.max((-2, -1), keepdims=True))


def reference_dark(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """DARK decoding of (N, K, H, W) heatmaps trained with Gaussians of ``sigma`` -> (N, K, 2) as (x, y)."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1).argmax(-1)
    x, y = flat % w, flat // w
    logs = np.log(np.maximum(_blur(heatmaps.astype(np.float64), reference_kernel_size(sigma)), 1e-10))
    inside = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    xs, ys = np.clip(x, 2, w - 3), np.clip(y, 2, h - 3)

    def at(dx: int, dy: int) -> np.ndarray:
        return np.take_along_axis(logs.reshape(n, k, -1), ((ys + dy) * w + xs + dx)[..., None], -1)[..., 0]

    gradient = np.stack([0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))], -1)
    dxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)
    invertible = inside & (dxx * dyy - dxy**2 != 0)
    hessian[~invertible] = np.eye(2)
    offset = -np.linalg.solve(hessian, gradient[..., None])[..., 0]
    return np.stack([x, y], -1) + np.where(invertible[..., None], offset, 0.0)


def gaussian_maps(n: int, size: int, sigma: float, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` maps (n, 1, size, size) of peak-1 Gaussians at uniform sub-pixel centres (n, 1, 2), plus noise."""
    rng = np.random.default_rng(seed)
    margin = min(3 * sigma, size / 4)
    centres = margin + rng.random((n, 1, 2)) * (size - 1 - 2 * margin)
    grid = np.arange(size)
    gx = np.exp(-((grid - centres[..., :1]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((grid - centres[..., 1:]) ** 2) / (2 * sigma**2))
    maps = gy[..., :, None] * gx[..., None, :] + noise * rng.standard_normal((n, 1, size, size))
    return maps.astype(np.float32), centres


def errors(maps: np.ndarray, centres: np.ndarray, sigma: float) -> dict[str, float]:
    """Mean distance to the true centres, heatmap pixels: argmax, kit's dark (default blur) and the reference."""
    codec = HeatmapCodec(stride=1, sigma=sigma, outputs="heatmap")
    out = {d: codec.decode_heatmap_coords(torch.from_numpy(maps), d).double().numpy() for d in ("argmax", "dark")}
    out["reference"] = reference_dark(maps, sigma)
    return {name: float(np.linalg.norm(xy - centres, axis=-1).mean()) for name, xy in out.items()}


def test_reference_kernel_sizes_are_mmposes():
    assert [reference_kernel_size(s) for s in (1.0, 2.0, 3.0)] == [5, 11, 17]


def test_reference_is_exact_on_clean_maps():
    maps, centres = gaussian_maps(64, 32, 2.0, 0.0)
    assert np.abs(reference_dark(maps, 2.0) - centres).max() < 0.02


@pytest.mark.parametrize(("size", "sigma"), [(64, 2.0), (16, 1.0)])
@pytest.mark.parametrize("noise", [0.03, 0.1])
def test_kit_dark_is_as_good_as_the_reference(size, sigma, noise):
    err = errors(*gaussian_maps(64, size, sigma, noise, seed=int(100 * noise)), sigma)
    assert err["dark"] <= 1.05 * err["reference"], err
    assert err["dark"] < err["argmax"], err


def test_dark_blur_follows_the_final_sigma_unless_set():
    assert HeatmapCodec(sigma=2.0).dark_sigma == 2.0
    assert HeatmapCodec(sigma=3.0, sigma_end=1.5).dark_sigma == 1.5
    assert HeatmapCodec(sigma=2.0, dark_blur=0.0).dark_sigma == 0.0
