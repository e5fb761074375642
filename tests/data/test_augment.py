"""Augmentation: images and points move together, every point kept in order, flips swap identities; both paths
(DataLoader geometry + device photometrics, all on the device) draw from one distribution."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import default_collate

from kit.config import AugmentConfig
from kit.data.augment import build_geometry, center_crop, hflip
from kit.data.dataset import CropDataset, RawCropBatches
from kit.data.gpu_augment import affine_matrices, make_batch_transform
from kit.data.photometric import _RGB_TO_YIQ, blur_kernels, luma, photometric
from kit.data.prepare import CropCache

NO_PHOTOMETRIC = {"color": 0, "blur": 0, "noise": 0, "cutout": 0}
GEOMETRY_ONLY = {**NO_PHOTOMETRIC, "scale": 0.2, "rotate": 30, "shift": 0.1}
NO_GEOMETRY = {"hflip": 0, "scale": 0, "rotate": 0, "shift": 0}
SIZE, PAD = 32, 8
SIDE = SIZE + 2 * PAD


def _blob_image(side: int, centre: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    blob = 255 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    image = np.zeros((side, side, 3), np.uint8)
    image[..., 0] = blob.astype(np.uint8)
    return image


def _centroid(channel: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    weight = channel.astype(np.float64)
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


def _cache(tmp_path, images: np.ndarray) -> CropCache:
    """A crop cache of ``images`` whose original pixels are its cache pixels."""
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "transforms.npy", np.tile(np.eye(2, 3), (len(images), 1, 1)))
    return CropCache(path=tmp_path, size=(images.shape[1] - 2 * PAD), pad=PAD)


def _both_paths(cache: CropCache, points: np.ndarray, cfg: AugmentConfig, perm, seed: int = 0):
    """All rows through the DataLoader path and through the device path: (unit images, points) of each."""
    rows = np.arange(len(points))
    cpu = default_collate(list(CropDataset(cache, rows, points, cfg, perm, seed)))
    raw = RawCropBatches(cache, rows, points).__getitems__(list(rows))
    out = []
    for (images, pts), on_device in [(cpu[:2], False), (raw[:2], True)]:
        transform = make_batch_transform(
            cfg,
            cache.size,
            (0.0, 0.0, 0.0),
            (1.0, 1.0, 1.0),
            False,
            perm,
            torch.device("cpu"),
            seed + 1,
            geometry_on_device=on_device,
        )
        x, moved = transform(images, pts)
        out.append((x.numpy(), moved.numpy()))
    return out


def test_albumentations_pipeline_keeps_points_on_the_image_and_in_order():
    rng = np.random.default_rng(0)
    augment = build_geometry(AugmentConfig(hflip=0, **GEOMETRY_ONLY), size=64, side=96)
    augment.set_random_seed(0)
    for _ in range(20):
        points = rng.uniform(32, 64, size=(5, 2))
        points[1] = [-30.0, 200.0]  # far outside the frame: must be kept, in its place
        out = augment(image=_blob_image(96, points[0]), keypoints=points)
        moved = np.asarray(out["keypoints"])
        assert moved.shape == (5, 2)
        np.testing.assert_allclose(_centroid(out["image"][..., 0]), moved[0], atol=0.1)


def test_hflip_swaps_identities_and_is_an_involution():
    perm = np.array([1, 0, 2])
    image = _blob_image(32, np.array([5.0, 10.0]))
    points = np.array([[5.0, 10.0], [26.0, 10.0], [15.5, 3.0]])
    flipped_image, flipped = hflip(image, points, perm)
    # the blob that was point 0 (left) is now at the mirrored place, which is point 1's slot
    np.testing.assert_allclose(_centroid(flipped_image[..., 0]), flipped[1], atol=0.05)
    np.testing.assert_allclose(flipped[2], [15.5, 3.0])
    back_image, back = hflip(flipped_image, flipped, perm)
    np.testing.assert_array_equal(back_image, image)
    np.testing.assert_allclose(back, points)


def test_center_crop_is_an_exact_shift():
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    crop, points = center_crop(image, np.array([[3.0, 4.0]]), size=6, pad=2)
    assert crop.shape == (6, 6, 3) and crop[0, 0, 0] == image[2, 2, 0]
    np.testing.assert_allclose(points, [[1.0, 2.0]])


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_both_paths_move_images_and_points_together(tmp_path, hflip_p):
    rng = np.random.default_rng(1)
    points = rng.uniform(PAD + 12, PAD + SIZE - 13, size=(12, 2, 2)).astype(np.float32)
    points[:, 1] = [-40.0, 90.0]  # outside the frame: kept, in its slot
    cache = _cache(tmp_path, np.stack([_blob_image(SIDE, p[0]) for p in points]))
    cfg = AugmentConfig(hflip=hflip_p, **GEOMETRY_ONLY)
    slot = 1 if hflip_p == 1.0 else 0  # a flip moves the blob of point 0 into point 1's slot
    for x, moved in _both_paths(cache, points, cfg, np.array([1, 0])):
        assert x.shape == (12, 3, SIZE, SIZE) and moved.shape == (12, 2, 2)
        for b in range(len(x)):
            np.testing.assert_allclose(_centroid(x[b, 0]), moved[b, slot], atol=0.1)
        assert (np.abs(moved[:, 1 - slot]) > 30).any(axis=1).all()


def test_device_matrices_equal_albumentations_affine():
    from albumentations.augmentations.geometric import functional as fgeometric

    for scale, degrees, tx, ty in [(1.1, 20.0, 3, -2), (0.85, -33.0, -1, 4), (1.0, 90.0, 0, 0)]:
        expected = fgeometric.create_affine_transformation_matrix(
            {"x": tx, "y": ty}, {"x": 0.0, "y": 0.0}, {"x": scale, "y": scale}, degrees, fgeometric.center((SIDE, SIDE))
        )[:2] - [[0, 0, PAD], [0, 0, PAD]]  # then the centre crop
        shift = torch.tensor([[tx, ty]], dtype=torch.float)
        ours = affine_matrices(torch.tensor([scale]), torch.tensor([degrees]), shift, SIZE, SIDE)
        np.testing.assert_allclose(ours[0].numpy(), expected, atol=1e-4)


def _implied_geometry(source: np.ndarray, out: np.ndarray, perm: np.ndarray):
    """Flip, zoom, angle (albumentations' sign) and shift that took model-input ``source`` (P, 2) to each of
    ``out`` (N, P, 2), and the worst residual of the similarity fit, in pixels."""
    c = (SIZE - 1) / 2
    src = (source[:, 0] - c) + 1j * (source[:, 1] - c)
    dst = (out[..., 0] - c) + 1j * (out[..., 1] - c)

    def fit(target):  # target = a src + t, a = zoom x exp(-i angle)
        s0, t0 = src - src.mean(), target - target.mean(-1, keepdims=True)
        a = (np.conj(s0) * t0).sum(-1) / (np.abs(s0) ** 2).sum()
        t = target.mean(-1) - a * src.mean()
        return a, t, np.abs(target - (a[:, None] * src + t[:, None])).max(-1)

    plain, mirrored = fit(dst), fit((-np.conj(dst))[:, perm])  # mirrored: undo x -> -x and the slot swap
    flip = mirrored[2] < plain[2]
    a, t, residual = (np.where(flip, m, p) for m, p in zip(mirrored, plain, strict=True))
    return flip, np.abs(a), -np.rad2deg(np.angle(a)), np.stack([t.real, t.imag], -1), residual


def test_both_paths_sample_the_same_geometry(tmp_path):
    n, cfg = 1500, AugmentConfig(hflip=0.5, **GEOMETRY_ONLY)
    layout = np.array([[-9.0, -6.0], [10.0, -4.0], [2.0, 8.0], [-3.0, 3.0]]) + PAD + (SIZE - 1) / 2  # asymmetric
    perm = np.array([1, 0, 2, 3])
    cache = _cache(tmp_path, np.zeros((n, SIDE, SIDE, 3), np.uint8))
    paths = [
        _implied_geometry(layout - PAD, moved, perm)
        for _, moved in _both_paths(cache, np.tile(layout, (n, 1, 1)).astype(np.float32), cfg, perm)
    ]
    shift_px = cfg.shift * SIZE  # albumentations truncates U(-+ shift_px) to whole pixels
    values = np.arange(-3, 4)
    expected_shift = np.clip(np.minimum(np.abs(values) + 1, shift_px) - np.abs(values), 0, 1) / (2 * shift_px)
    expected_shift[3] *= 2
    for flip, zoom, angle, shift, residual in paths:
        assert residual.max() < 0.05  # a similarity: one zoom for x and y
        assert abs(flip.mean() - cfg.hflip) < 0.04
        assert stats.kstest(zoom, stats.uniform(1 - cfg.scale, 2 * cfg.scale).cdf).statistic < 0.04
        assert stats.kstest(angle, stats.uniform(-cfg.rotate, 2 * cfg.rotate).cdf).statistic < 0.04
        np.testing.assert_allclose(shift, np.round(shift), atol=0.02)
        for axis in range(2):
            frequency = (np.round(shift[:, axis])[:, None] == values).mean(0)
            np.testing.assert_allclose(frequency, expected_shift, atol=0.035)
    (cpu_flip, *cpu), (dev_flip, *dev) = paths
    assert abs(cpu_flip.mean() - dev_flip.mean()) < 0.05
    for a, b in zip(cpu[:2], dev[:2], strict=True):
        assert stats.ks_2samp(a, b).statistic < 0.06
    np.testing.assert_allclose(np.corrcoef(*cpu[2].T)[0, 1], 0, atol=0.08)  # x and y shift drawn apart
    np.testing.assert_allclose(np.corrcoef(*dev[2].T)[0, 1], 0, atol=0.08)


def _texture(n: int, side: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, side, side, 3): smooth colour gradients plus fine detail, in the middle of the range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = rng.uniform(0.35, 0.55, (n, 1, 1, 3)) + 0.1 * np.sin(6 * xx + 4 * yy)[None, ..., None] * rng.uniform(
        -1, 1, (n, 1, 1, 3)
    )
    return np.clip(255 * (base + rng.uniform(-0.05, 0.05, (n, side, side, 3))), 0, 255).astype(np.uint8)


def _unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _run(x: torch.Tensor, seed: int = 0, **cfg) -> torch.Tensor:
    return photometric(x.clone(), AugmentConfig(**{**NO_PHOTOMETRIC, **cfg}), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", ["color", "blur", "noise", "cutout"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_each_photometric_op_changes_images_at_its_rate(op, p):
    x = _unit(_texture(300, 24))
    out = _run(x, **{op: p})
    changed = (out != x).flatten(1).any(1).float().mean().item()
    if p == 0:
        assert torch.equal(out, x)
    else:
        assert abs(changed - p) < 0.07
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_photometric_output_stays_in_unit_range():
    x = _unit(_texture(64, 24)) * 1.6 - 0.3  # values beyond the range on the way in are fine too
    x = x.clamp(0, 1)
    out = _run(
        x, color=1, blur=1, noise=1, cutout=1, brightness=1, contrast=1, saturation=1, hue=0.5, noise_std=(0.5, 1.0)
    )
    assert torch.isfinite(out).all() and float(out.min()) >= 0 and float(out.max()) <= 1


def _chroma(x: torch.Tensor) -> torch.Tensor:
    """Complex (B, H, W) I + iQ of float RGB images."""
    yiq = torch.einsum("ij,bjhw->bihw", torch.tensor(_RGB_TO_YIQ, dtype=torch.float32), x)
    return torch.complex(yiq[:, 1].double(), yiq[:, 2].double())


def _implied_factor(name: str, x: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    if name == "brightness":
        value = out.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    elif name == "contrast":
        value = luma(out).std(dim=(1, 2)) / luma(x).std(dim=(1, 2))
    elif name == "saturation":
        value = (out - luma(out)[:, None]).flatten(1).norm(dim=1) / (x - luma(x)[:, None]).flatten(1).norm(dim=1)
    else:
        value = torch.angle((torch.conj(_chroma(x)) * _chroma(out)).sum(dim=(1, 2))) / (2 * np.pi)
    return value.double().numpy()


@pytest.mark.parametrize("name, amount", [("brightness", 0.25), ("contrast", 0.4), ("saturation", 0.35), ("hue", 0.08)])
def test_colour_jitter_factors_match_the_configured_ranges(name, amount):
    x = _unit(_texture(600, 16))
    ranges = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, name: amount}
    factor = _implied_factor(name, x, _run(x, color=1, **ranges))
    centre = 0.0 if name == "hue" else 1.0
    low, high = centre - amount, centre + amount
    assert factor.min() > low - 2e-3 and factor.max() < high + 2e-3
    assert factor.min() < low + 0.03 * amount and factor.max() > high - 0.03 * amount
    assert stats.kstest(factor, stats.uniform(low, high - low).cdf).statistic < 0.06


def test_hue_shift_keeps_the_luminance():
    x = _unit(_texture(100, 16))
    out = _run(x, color=1, brightness=0, contrast=0, saturation=0, hue=0.5)
    assert (luma(out) - luma(x)).abs().max() < 2e-3
    turned = np.abs(_implied_factor("hue", x, out))
    assert np.median(turned) > 0.15  # the colours did turn


def test_noise_sigma_matches_the_configured_range():
    x = torch.full((500, 3, 24, 24), 0.5)
    sigma = (_run(x, noise=1, noise_std=(0.03, 0.06)) - x).std(dim=(1, 2, 3)).numpy()
    assert sigma.min() > 0.03 * 0.93 and sigma.max() < 0.06 * 1.07
    assert stats.kstest(sigma, stats.uniform(0.03, 0.03).cdf).statistic < 0.08


def test_cutout_holes_match_the_configured_sizes_and_count():
    x = torch.full((300, 3, 40, 40), 0.5)
    hole = (_run(x, cutout=1, cutout_holes=(1, 1), cutout_size=(0.2, 0.4)) != x).any(1)
    for mask in hole.numpy()[:50]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # one filled rectangle
    one = hole.float().mean().item()
    three = (_run(x, cutout=1, cutout_holes=(3, 3), cutout_size=(0.2, 0.4)) != x).any(1).float().mean().item()
    assert 2.4 < three / one < 3.0  # three holes, sometimes overlapping
    out = _run(x, cutout=1, cutout_holes=(3, 3))
    fill = out[out != x]
    assert abs(fill.mean().item() - 0.5) < 0.02 and fill.std().item() > 0.25  # uniform noise


def test_blur_kernels_are_gaussian_or_motion_and_smooth():
    kernels = blur_kernels(4000, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(kernels.sum(dim=(1, 2)).numpy(), 1, atol=1e-5)
    assert float(kernels.min()) >= 0
    taps = (kernels > 0).sum(dim=(1, 2))
    gaussian = taps >= 9  # a k x k square; motion kernels are lines of at most k = 7 taps
    assert abs(gaussian.float().mean().item() - 0.5) < 0.03
    assert set(taps[gaussian].tolist()) == {9, 25}
    assert taps[~gaussian].max() <= 7
    g = kernels[gaussian]
    torch.testing.assert_close(g, g.transpose(1, 2))
    torch.testing.assert_close(g, g.flip(1))
    x = _unit(_texture(50, 24))
    out = _run(x, blur=1)
    detail = lambda im: (im[..., 1:, :] - im[..., :-1, :]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert (detail(out) < detail(x)).all()
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.01, rtol=0)


def _features(x: np.ndarray) -> list[np.ndarray]:
    """Per-image brightness, contrast and fine detail."""
    return [x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), np.abs(np.diff(x, axis=-1)).mean(axis=(1, 2, 3))]


def test_both_paths_have_the_same_photometric_statistics(tmp_path):
    n = 600
    cache = _cache(tmp_path, _texture(n, SIDE, seed=3))
    cfg = AugmentConfig(**NO_GEOMETRY, color=1, blur=0.5, noise=1, cutout=0.5)
    (cpu, _), (dev, _) = _both_paths(cache, np.zeros((n, 1, 2), np.float32), cfg, None)
    plain = _unit(np.array(cache.images()[:, PAD:-PAD, PAD:-PAD])).numpy()
    for a, b, before in zip(_features(cpu), _features(dev), _features(plain), strict=True):
        assert stats.ks_2samp(a, b).statistic < 0.1
        assert stats.ks_2samp(a, before).statistic > 0.2  # the statistic does see the augmentation


def test_batch_transform_is_reproducible_and_normalises():
    images = torch.from_numpy(_texture(8, SIDE))
    points = torch.rand(8, 3, 2) * SIDE
    cfg = AugmentConfig()
    perm = np.array([1, 0, 2])

    def run(seed, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)):
        transform = make_batch_transform(cfg, SIZE, mean, std, True, perm, torch.device("cpu"), seed, True)
        return transform(images, points)

    (x, p), (x2, p2), (x3, _) = run(0), run(0), run(1)
    assert torch.equal(x, x2) and torch.equal(p, p2) and not torch.equal(x, x3)
    assert x.shape == (8, 3, SIZE, SIZE) and x.is_contiguous(memory_format=torch.channels_last)
    unit, _ = run(0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(
        x, (unit - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    )


def test_batch_transform_checks_its_inputs():
    cfg = AugmentConfig()
    with pytest.raises(ValueError, match="flip permutation"):
        make_batch_transform(cfg, SIZE, (0, 0, 0), (1, 1, 1), False, None, torch.device("cpu"), 0, True)
    transform = make_batch_transform(cfg, SIZE, (0, 0, 0), (1, 1, 1), False, None, torch.device("cpu"), 0, False)
    with pytest.raises(ValueError, match="32 x 32"):
        transform(torch.zeros(2, SIDE, SIDE, 3, dtype=torch.uint8), torch.zeros(2, 3, 2))


def test_cache_points_convert_memory_mapped_labels_when_read(tmp_path, monkeypatch):
    import kit.io
    from kit.data.dataset import CachePoints

    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 300, (23, 5, 2)).astype(np.float32)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "images.npy", np.zeros((23, SIDE, SIDE, 3), np.uint8))
    transforms = np.tile(np.eye(2, 3), (23, 1, 1)) * rng.uniform(0.1, 0.3, (23, 1, 1))
    transforms[:, :, 2] = rng.uniform(-20, 20, (23, 2))
    np.save(tmp_path / "transforms.npy", transforms)
    cache = CropCache(path=tmp_path, size=SIZE, pad=PAD)
    rows = np.array([20, 3, 4, 9, 0, 17, 11])
    expected = cache.to_cache(labels[rows], rows)
    points = CachePoints(cache, np.load(tmp_path / "labels.npy", mmap_mode="r"), rows)
    np.testing.assert_array_equal(points[2], expected[2])
    np.testing.assert_array_equal(points[np.array([5, 1])], expected[[5, 1]])
    monkeypatch.setattr(kit.io, "CHUNK_BYTES", 3 * 5 * 2 * 4)  # 3 rows a chunk
    mean = points.mean()
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, expected.mean(axis=0))  # bit for bit: the model's first mean shape
    np.testing.assert_array_equal(CropDataset(cache, rows, labels)[6][1], expected[6] - PAD)
