"""The metrics: MSE and NME (face box and two-point normalisation), failure rate, chunking, zero face sizes."""

import numpy as np
import pytest

from kit import metrics
from kit.errors import DataError
from kit.metrics import Scores, face_sizes, format_nme, landmark_scores, nme_per_face, nme_summary

# Two faces of 4 points. Face 0: a 4 x 1 box (face box sqrt(4 * 1) = 2), points 0 and 1 are 4 apart.
# Face 1: an 8 x 2 box (face box 4), points 0 and 1 are 8 apart.
TRUE = np.array(
    [
        [[0, 0], [4, 0], [4, 1], [0, 1]],
        [[10, 10], [18, 10], [18, 12], [10, 12]],
    ],
    dtype=np.float64,
)
PRED = TRUE.copy()
PRED[0, 0] += [3, 4]  # face 0: one point 5 px off: mean point error 5 / 4 = 1.25
PRED[1] += [0, 0.2]  # face 1: every point 0.2 px off: mean point error 0.2


def test_face_box_case():
    np.testing.assert_allclose(face_sizes(TRUE), [2.0, 4.0])
    # 1.25 / 2 and 0.2 / 4, in percent
    np.testing.assert_allclose(nme_per_face(PRED, TRUE), [62.5, 5.0])
    scores = landmark_scores(PRED, TRUE)
    assert scores.mse == pytest.approx((25 + 4 * 0.2**2) / 16)  # 16 coordinates
    assert scores.nme == pytest.approx((62.5 + 5.0) / 2)
    assert scores.failure_rate == pytest.approx(50.0)  # face 0 is above 10%, face 1 is not


def test_two_point_case():
    np.testing.assert_allclose(face_sizes(TRUE, (0, 1)), [4.0, 8.0])
    np.testing.assert_allclose(face_sizes(TRUE, (1, 0)), [4.0, 8.0])
    np.testing.assert_allclose(face_sizes(TRUE, (0, 2)), [np.hypot(4, 1), np.hypot(8, 2)])
    # 1.25 / 4 and 0.2 / 8
    np.testing.assert_allclose(nme_per_face(PRED, TRUE, (0, 1)), [31.25, 2.5])
    scores = landmark_scores(PRED, TRUE, (0, 1))
    assert (scores.nme, scores.failure_rate) == pytest.approx(((31.25 + 2.5) / 2, 50.0))


def test_given_sizes_normalise_a_subset_of_the_points():
    # a submission's 2 requested points, normalised by the full faces' sizes
    subset = [1, 3]
    per_face = nme_per_face(PRED[:, subset], TRUE[:, subset], sizes=face_sizes(TRUE))
    np.testing.assert_allclose(per_face, [0.0, 5.0])
    assert landmark_scores(PRED[:, subset], TRUE[:, subset], sizes=np.array([2.0, 4.0])).nme == pytest.approx(2.5)


def test_failure_rate_is_the_share_of_faces_above_ten_percent():
    assert nme_summary(np.array([1.0, 10.0, 10.5, 50.0])) == pytest.approx((17.875, 50.0))  # 10.0 is not above
    assert nme_summary(np.array([0.0, 9.99])) == (pytest.approx(4.995), 0.0)
    nme, failure_rate = nme_summary(np.array([]))
    assert np.isnan(nme) and np.isnan(failure_rate)


def test_chunks_and_memory_maps_give_the_same_scores(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 100, (37, 6, 2))
    pred = true + rng.normal(0, 3, true.shape)
    np.save(tmp_path / "pred.npy", pred.astype(np.float32))
    whole = landmark_scores(pred.astype(np.float32), true)
    mapped = np.load(tmp_path / "pred.npy", mmap_mode="r")
    chunked = landmark_scores(mapped, true, chunk=5)
    assert chunked.mse == pytest.approx(whole.mse) and chunked.mse == pytest.approx(metrics.mse(mapped, true))
    assert (chunked.nme, chunked.failure_rate) == pytest.approx((whole.nme, whole.failure_rate))
    np.testing.assert_allclose(nme_per_face(mapped, true, chunk=4), nme_per_face(pred, true), rtol=1e-6)
    np.testing.assert_allclose(face_sizes(true, chunk=3), face_sizes(true))


def test_a_zero_face_size_names_the_row():
    flat = TRUE.copy()
    flat[1, :, 1] = 10  # face 1: every point on one line, a box of zero height
    with pytest.raises(DataError, match=r"^train.csv: row 1 \(b.jpg\): face size 0 \(face box\), NME is undefined"):
        face_sizes(flat, source="train.csv", names=np.array(["a.jpg", "b.jpg"]))
    same = TRUE.copy()
    same[0, 2] = same[0, 0]
    with pytest.raises(DataError, match=r"true landmarks: row 0: face size 0 \(points 0-2\)"):
        nme_per_face(PRED, same, (0, 2))
    assert face_sizes(same, (0, 1))[0] == 4.0  # other points: fine


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape mismatch"):
        landmark_scores(PRED[:, :3], TRUE)
    with pytest.raises(ValueError, match="face sizes for 2 faces"):
        nme_per_face(PRED, TRUE, sizes=np.ones(3))


def test_format():
    assert str(Scores(12.345678, 4.5612, 3.0)) == "MSE 12.3457  NME 4.56%  >10%: 3.0%"
    assert format_nme(None, None) == ""
