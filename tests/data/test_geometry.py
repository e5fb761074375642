"""Crop geometry: the exact inverse, and images warped to where the points go (including the pre-shrink)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import kit.data.geometry as geometry
from kit.data.geometry import apply_affine, compose_affine, crop_transform, invert_affine, warp_image


@pytest.mark.parametrize("height, width", [(128, 128), (250, 190), (97, 413), (1000, 1400)])
@pytest.mark.parametrize("size, margin", [(128, 0.0), (224, 0.1), (64, -0.15)])
def test_round_trip_within_1e4_px(height, width, size, margin):
    rng = np.random.default_rng(height + width + size)
    points = rng.uniform(-0.2, 1.2, (5, 971, 2)) * [width, height]
    matrix = crop_transform(height, width, size, margin)
    crop_points = apply_affine(points, matrix).astype(np.float32)  # a model predicts float32 crop coordinates
    back = apply_affine(crop_points, invert_affine(matrix))
    assert np.abs(back - points).max() < 1e-4 * max(1.0, max(height, width) / 1000)
    np.testing.assert_allclose(apply_affine(apply_affine(points, matrix), invert_affine(matrix)), points, atol=1e-9)


def test_crop_maps_centre_to_centre_and_edges_to_edges():
    height, width, size = 100, 160, 50
    matrix = crop_transform(height, width, size)
    centre = apply_affine(np.array([[(width - 1) / 2, (height - 1) / 2]]), matrix)
    np.testing.assert_allclose(centre, [[(size - 1) / 2, (size - 1) / 2]])
    # The crop is the centred 100x100 square: its pixel edges land on the crop's pixel edges.
    edges = apply_affine(np.array([[30 - 0.5, -0.5], [130 - 0.5, 100 - 0.5]]), matrix)
    np.testing.assert_allclose(edges, [[-0.5, -0.5], [size - 0.5, size - 0.5]])
    with_margin = crop_transform(height, width, size, margin=0.25)
    np.testing.assert_allclose(with_margin[0, 0], size / 150)


def test_batched_matrices_match_one_by_one():
    rng = np.random.default_rng(0)
    matrices = np.stack([crop_transform(h, w, 64, 0.1) for h, w in [(100, 80), (90, 300), (64, 64)]])
    points = rng.uniform(0, 100, (3, 7, 2))
    batched = apply_affine(points, matrices)
    for i in range(3):
        np.testing.assert_allclose(batched[i], apply_affine(points[i], matrices[i]))
    np.testing.assert_allclose(apply_affine(batched, invert_affine(matrices)), points, atol=1e-10)


def test_compose_affine():
    a, b = crop_transform(100, 120, 64, 0.1), crop_transform(64, 64, 32)
    points = np.random.default_rng(1).uniform(0, 100, (9, 2))
    np.testing.assert_allclose(apply_affine(points, compose_affine(b, a)), apply_affine(apply_affine(points, a), b))


def rotation_about(cx: float, cy: float, degrees: float) -> np.ndarray:
    return cv2.getRotationMatrix2D((cx, cy), degrees, 1.0)


def blob(height: int, width: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((g * 250).astype(np.float32)[..., None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    weight = np.where(weight > 0.02 * weight.max(), weight, 0.0)
    yy, xx = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]]
    return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()


@pytest.mark.parametrize(
    "height, width, size, x, y, sigma, degrees",
    [
        (60, 80, 128, 41.3, 27.8, 2.0, 0.0),  # upscale
        (150, 200, 128, 97.6, 80.2, 3.0, 0.0),  # mild downscale, plain bilinear
        (900, 1203, 64, 655.4, 401.7, 40.0, 0.0),  # 14x downscale: INTER_AREA pre-shrink, width not divisible
        (700, 700, 96, 300.25, 420.5, 25.0, 17.0),  # rotated crop, pre-shrink
    ],
)
def test_warp_moves_a_dot_where_apply_affine_moves_the_point(monkeypatch, height, width, size, x, y, sigma, degrees):
    calls = []
    real_resize = cv2.resize
    monkeypatch.setattr(geometry.cv2, "resize", lambda *a, **k: calls.append(k) or real_resize(*a, **k))
    matrix = compose_affine(crop_transform(height, width, size, 0.05), rotation_about(x, y, degrees))
    warped = warp_image(blob(height, width, x, y, sigma), matrix, size)
    expected = apply_affine(np.array([[x, y]]), matrix)[0]
    assert np.abs(centroid(warped) - expected).max() < 0.05
    assert bool(calls) == (size / min(height, width) < 0.5)


def test_warp_single_bright_pixel_at_integer_location():
    image = np.zeros((64, 64, 3), np.uint8)
    image[17, 40] = 255
    matrix = crop_transform(64, 64, 128)  # exact 2x: pixel (40, 17) maps to (80.5, 34.5)
    warped = warp_image(image, matrix, 128)
    np.testing.assert_allclose(apply_affine(np.array([[40, 17]]), matrix), [[80.5, 34.5]])
    np.testing.assert_allclose(centroid(warped), [80.5, 34.5], atol=0.02)
    same = warp_image(image, crop_transform(64, 64, 64), 64)
    np.testing.assert_array_equal(same, image)
