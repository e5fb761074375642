"""The left/right flip permutation: derived from the data, an involution, equal to the truth on synth data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_poses, symmetric_layout

from kit.data.flip import derive_flip_permutation, flip_points, load_permutation, save_permutation
from kit.errors import DataError


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_points, max_angle", [(40, 10.0), (120, 45.0), (971, 25.0)])
def test_derived_from_symmetric_layout_in_random_poses(seed, n_points, max_angle):
    rng = np.random.default_rng(seed)
    layout, true_perm = symmetric_layout(n_points, rng)
    scale = (60.0, 120.0) if n_points < 500 else (300.0, 400.0)  # integer rounding below the point spacing
    shapes = np.rint(random_poses(layout, 60, rng, max_angle=max_angle, scale=scale, noise=0.3))
    perm = derive_flip_permutation(shapes)
    np.testing.assert_array_equal(perm, true_perm)
    np.testing.assert_array_equal(perm[perm], np.arange(n_points))


def test_tilted_mean_shape():
    # Every face tilted the same way: the mirror axis is not vertical.
    rng = np.random.default_rng(7)
    layout, true_perm = symmetric_layout(60, rng)
    angle = np.deg2rad(35.0)
    tilt = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    shapes = random_poses(layout @ tilt, 30, rng, max_angle=3.0, scale=(50.0, 80.0))
    np.testing.assert_array_equal(derive_flip_permutation(shapes), true_perm)


def test_equals_the_synth_generators_permutation(tmp_path):
    from kit.data.landmarks import read_landmarks
    from kit.synth import generate_competition

    generate_competition(tmp_path / "synth", n_train=120, n_test=1, seed=5)
    points = read_landmarks(tmp_path / "synth" / "train" / "landmarks.csv").points
    truth = load_permutation(tmp_path / "synth" / "private" / "flip_permutation.txt", n_points=971)
    np.testing.assert_array_equal(derive_flip_permutation(np.asarray(points)), truth)


def test_random_points_are_not_symmetric():
    shapes = np.random.default_rng(0).uniform(0, 100, (30, 80, 2))
    with pytest.raises(DataError, match="not mirror-symmetric"):
        derive_flip_permutation(shapes)


def test_applying_the_permutation_twice_is_the_identity(tmp_path):
    rng = np.random.default_rng(1)
    _, perm = symmetric_layout(971, rng)
    points = rng.uniform(0, 100, (4, 971, 2))
    np.testing.assert_array_equal(points[:, perm][:, perm], points)
    save_permutation(tmp_path / "flip.txt", perm)
    np.testing.assert_array_equal(load_permutation(tmp_path / "flip.txt", n_points=971), perm)


def test_flip_points_twice_is_the_identity():
    rng = np.random.default_rng(2)
    layout, perm = symmetric_layout(50, rng)
    points = rng.uniform(0, 90, (3, 50, 2))
    once = flip_points(points, 90, perm)
    np.testing.assert_allclose(once[:, perm, 0], 89 - points[..., 0])
    np.testing.assert_allclose(flip_points(once, 90, perm), points)
    widths = np.array([90, 100, 110])
    np.testing.assert_allclose(flip_points(flip_points(points, widths, perm), widths, perm), points)
    # A symmetric face centred in its image flips onto itself.
    face = layout * 30 + [44.5, 40]
    np.testing.assert_allclose(flip_points(face, 90, perm), face, atol=1e-12)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1\n0\n2\nx\n", "line 4: not an integer"),
        ("1\n0\n", "2 entries, expected 3"),
        ("0\n0\n1\n", "not a permutation"),
        ("1\n2\n0\n", "not an involution"),
    ],
)
def test_load_permutation_rejects_bad_files(tmp_path, text, message):
    (tmp_path / "flip.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        load_permutation(tmp_path / "flip.txt", n_points=3)
