"""Augmentation moves images and points together, keeps every point in order, and flips swap identities."""

import numpy as np
import pytest
import torch

from kit.config import AugmentConfig
from kit.data.augment import build_augment, center_crop, hflip
from kit.data.gpu_augment import gpu_augment

GEOMETRY_ONLY = {"color": 0, "blur": 0, "noise": 0, "cutout": 0, "scale": 0.2, "rotate": 30, "shift": 0.1}


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


def test_albumentations_pipeline_keeps_points_on_the_image_and_in_order():
    rng = np.random.default_rng(0)
    augment = build_augment(AugmentConfig(hflip=0, **GEOMETRY_ONLY), size=64, side=96)
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
def test_device_augmentation_matches_points(hflip_p):
    batch, side, size = 12, 96, 64
    rng = np.random.default_rng(1)
    points = rng.uniform(30, 66, size=(batch, 2, 2)).astype(np.float32)
    images = torch.from_numpy(np.stack([_blob_image(side, p[0]) for p in points]))
    perm = torch.tensor([1, 0])
    cfg = AugmentConfig(hflip=hflip_p, **GEOMETRY_ONLY)
    x, moved = gpu_augment(images, torch.from_numpy(points), cfg, size, perm, torch.Generator().manual_seed(0),
                           torch.Generator().manual_seed(0))
    assert x.shape == (batch, 3, size, size) and moved.shape == (batch, 2, 2)
    slot = 1 if hflip_p == 1.0 else 0  # a flip moves the blob of point 0 into point 1's slot
    for b in range(batch):
        np.testing.assert_allclose(_centroid(x[b, 0].numpy()), moved[b, slot].numpy(), atol=0.05)


def test_device_photometric_augmentation_keeps_range_and_shape():
    images = torch.randint(0, 255, (4, 40, 40, 3), dtype=torch.uint8)
    points = torch.rand(4, 3, 2) * 40
    cfg = AugmentConfig(hflip=0.5, color=1, blur=1, noise=1, cutout=1)
    x, moved = gpu_augment(images, points, cfg, 32, torch.tensor([0, 2, 1]), torch.Generator().manual_seed(0),
                           torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.isfinite(moved).all()
