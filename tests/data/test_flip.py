"""The left/right flip permutation: derived from the data, an involution, equal to the truth on synth data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shapes import ibug68_layout
from tiny import random_poses, symmetric_layout

from kit.data.augment import hflip
from kit.data.flip import derive_flip_permutation, flip_points, load_permutation, mean_shape, save_permutation
from kit.data.tensors import mirror_points
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


def test_two_rows_with_wild_coordinates_do_not_change_the_permutation(tmp_path):
    from kit.data.landmarks import read_landmarks
    from kit.synth import generate_competition

    generate_competition(tmp_path / "synth", n_train=60, n_test=5, seed=6)
    path = tmp_path / "synth" / "train" / "landmarks.csv"
    truth = load_permutation(tmp_path / "synth" / "private" / "flip_permutation.txt", n_points=971)
    clean = np.asarray(read_landmarks(path, use_cache=False).points, dtype=np.float64)
    lines = path.read_text().split("\n")
    rng = np.random.default_rng(0)
    for line_no in (5, 40):  # two rows get 20 x values of -5000
        fields = lines[line_no - 1].split("\t")
        for point in rng.choice(971, 20, replace=False):
            fields[1 + 2 * point] = "-5000"
        lines[line_no - 1] = "\t".join(fields)
    path.write_text("\n".join(lines))
    points = np.asarray(read_landmarks(path, use_cache=False).points, dtype=np.float64)
    assert (points[[3, 38], :, 0] == -5000).sum() == 40
    np.testing.assert_array_equal(derive_flip_permutation(points), truth)
    # The fault is real: a mean over every shape is pulled off the clean mean; the robust one drops the two rows.
    assert np.abs(mean_shape(points, outlier_factor=np.inf) - mean_shape(clean)).max() > 0.1
    assert np.abs(mean_shape(points) - mean_shape(np.delete(clean, [3, 38], axis=0))).max() < 0.002


def test_random_points_are_not_symmetric():
    shapes = np.random.default_rng(0).uniform(0, 100, (30, 80, 2))
    with pytest.raises(DataError, match="not mirror-symmetric"):
        derive_flip_permutation(shapes)


def _flip_twice_is_identity(perm: np.ndarray, points: np.ndarray, image: np.ndarray) -> None:
    """Every flip helper of the kit, applied twice with ``perm``, gives back its input (AssertionError if not)."""
    width = image.shape[1]
    np.testing.assert_allclose(flip_points(flip_points(points, width, perm), width, perm), points)
    t, t_perm = torch.from_numpy(points), torch.from_numpy(perm)
    np.testing.assert_allclose(mirror_points(mirror_points(t, width, t_perm), width, t_perm).numpy(), points)
    rows = torch.arange(len(points)) % 2 == 0
    once = mirror_points(t, width, t_perm, rows)
    np.testing.assert_array_equal(once[~rows].numpy(), points[~rows.numpy()])  # rows left out are untouched
    np.testing.assert_allclose(mirror_points(once, width, t_perm, rows).numpy(), points)
    for shape in points:
        back_image, back = hflip(*hflip(image, shape, perm), perm)
        np.testing.assert_array_equal(back_image, image)
        np.testing.assert_allclose(back, shape, atol=1e-4)


def test_the_kits_permutation_and_flips_applied_twice_are_the_identity(tmp_path):
    rng = np.random.default_rng(1)
    layout, _ = symmetric_layout(971, rng)
    derived = derive_flip_permutation(np.rint(random_poses(layout, 40, rng, max_angle=20.0, scale=(300.0, 400.0))))
    save_permutation(tmp_path / "flip.txt", derived)
    perm = load_permutation(tmp_path / "flip.txt", n_points=971)
    np.testing.assert_array_equal(perm, derived)
    np.testing.assert_array_equal(perm[perm], np.arange(971))
    points = rng.uniform(-10, 110, (4, 971, 2))
    image = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
    _flip_twice_is_identity(perm, points, image)
    # The torch helper and the numpy one agree.
    np.testing.assert_allclose(
        mirror_points(torch.from_numpy(points), 100, torch.from_numpy(perm)).numpy(), flip_points(points, 100, perm)
    )
    # A permutation that is not an involution is caught, by the file check and by the helpers.
    bad = perm.copy()
    bad[[0, 1, 2]] = perm[[1, 2, 0]]
    assert not np.array_equal(bad[bad], np.arange(971))
    with pytest.raises(AssertionError):
        _flip_twice_is_identity(bad, points, image)
    save_permutation(tmp_path / "bad.txt", bad)
    with pytest.raises(DataError, match="not an involution"):
        load_permutation(tmp_path / "bad.txt", n_points=971)


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


# The standard iBUG 68-point left/right pairs (300-W); every other point lies on the mirror axis.
IBUG68_PAIRS = [
    *[(i, 16 - i) for i in range(8)],  # jaw
    *[(17 + i, 26 - i) for i in range(5)],  # brows
    (31, 35),
    (32, 34),  # nostrils
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),  # eyes
    (48, 54),
    (49, 53),
    (50, 52),
    (55, 59),
    (56, 58),  # outer lips
    (60, 64),
    (61, 63),
    (65, 67),  # inner lips
]


@pytest.mark.parametrize("seed", range(4))
def test_derives_the_ibug_68_point_map(seed):
    rng = np.random.default_rng(seed)
    layout = ibug68_layout()
    assert layout.shape == (68, 2)
    shapes = np.rint(random_poses(layout, 200, rng, max_angle=20.0, scale=(80.0, 140.0), noise=1.0))
    expected = np.arange(68)
    for a, b in IBUG68_PAIRS:
        expected[a], expected[b] = b, a
    perm = derive_flip_permutation(shapes)
    assert int((perm != expected).sum()) == 0, np.flatnonzero(perm != expected)


def test_mean_shape_in_chunks_and_of_a_sample(monkeypatch, tmp_path):
    import kit.data.flip as flip_module

    rng = np.random.default_rng(3)
    layout, _ = symmetric_layout(30, rng)
    shapes = random_poses(layout, 50, rng, max_angle=20.0, scale=(60.0, 120.0), noise=0.5).astype(np.float32)
    np.save(tmp_path / "shapes.npy", shapes)
    mapped = np.load(tmp_path / "shapes.npy", mmap_mode="r")
    whole = mean_shape(shapes)
    monkeypatch.setattr(flip_module, "_CHUNK", 7)
    np.testing.assert_allclose(mean_shape(mapped), whole, atol=1e-12)
    every_other = shapes[np.linspace(0, 49, 25).astype(int)]
    np.testing.assert_allclose(mean_shape(mapped, max_shapes=25), mean_shape(every_other), atol=1e-12)
