"""The stackers on arrays: moments, the per-coordinate ridge, the shape correction, and honest nested CV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from kit.ensemble import stack_nested, stats
from kit.ensemble.nested import fold_point_grams, nested_cv
from kit.ensemble.ridge import fit_point_ridge, point_sse, solve_point_ridge
from kit.ensemble.shape import fit_basis, normalised_runs
from kit.ensemble.stack_nested import nested_pca_ridge, nested_ridge
from kit.ensemble.stats import accumulate, frame
from kit.ensemble.weights import Method

# ---------------------------------------------------------------- synthetic faces and runs


def faces(n: int, p: int, rng, modes: np.ndarray | None = None, coeff_sd: float = 1.0, jitter: float = 0.0):
    """Faces in pixels (n, P, 2): a mean shape, optional deformation modes (K, P, 2), a random scale and position,
    and ``jitter`` px of independent noise on every point (so that faces are not exactly low-dimensional).

    Returns the faces, their scale (n,) and the mode coefficients (n, K).
    """
    angle = np.linspace(0, 2 * np.pi, p, endpoint=False)
    mean_shape = np.stack([np.cos(angle), 0.8 * np.sin(angle)], axis=-1) * (1 + 0.3 * np.cos(3 * angle))[:, None]
    k = 0 if modes is None else len(modes)
    coeff = rng.normal(0, coeff_sd, (n, k))
    shape = mean_shape[None] + (np.einsum("nk,kpc->npc", coeff, modes) if k else 0)
    scale = rng.uniform(30, 60, n)
    centre = rng.uniform(80, 120, (n, 1, 2))
    return centre + scale[:, None, None] * shape + rng.normal(0, jitter, shape.shape), scale, coeff


def smooth_modes(k: int, p: int, rng) -> np.ndarray:
    """Deformation modes (K, P, 2) that move many points together, orthonormal over the 2P coordinates."""
    angle = np.linspace(0, 2 * np.pi, p, endpoint=False)
    raw = []
    for i in range(k):
        phase = rng.uniform(0, 2 * np.pi, 2)
        raw.append(np.stack([np.cos((i + 2) * angle + phase[0]), np.sin((i + 2) * angle + phase[1])], -1).ravel())
    q, _ = np.linalg.qr(np.array(raw).T)
    return (q.T * 0.3 * np.sqrt(2 * p / 2)).reshape(k, p, 2) / np.sqrt(p)


def noisy_runs(truth, sigmas, rng):
    return [truth + rng.normal(0, s, truth.shape) for s in sigmas]


def balanced_folds(n: int, k: int, rng) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def held_out_sse(score, predictions, truth, folds) -> np.ndarray:
    """Each fold's squared error, computed row by row from the fold's model (the check of the moment algebra)."""
    x = np.stack([p.reshape(len(p), -1) for p in predictions], axis=-1)
    y = truth.reshape(len(truth), -1)
    return np.array([((y[folds == k] - m.predict(x[folds == k])) ** 2).sum() for k, m in enumerate(score.fold_models)])


# ---------------------------------------------------------------- moments


def test_accumulate_matches_direct_sums_in_any_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    truth, _, _ = faces(53, 6, rng)
    preds = noisy_runs(truth, (1.0, 2.0, 0.5), rng)
    folds = rng.integers(0, 3, 53)
    whole = accumulate(preds, truth, folds, 3, shape=True)
    monkeypatch.setattr(stats, "CHUNK_BYTES", 8 * 12 * 10 * 5)  # 5 rows a chunk
    chunked = accumulate(preds, truth, folds, 3, shape=True)
    assert np.allclose(chunked.grams, fold_point_grams(preds, truth, folds, 3))
    x = np.stack([p.reshape(53, -1) for p in preds], -1)
    m = x.mean(-1)
    y = truth.reshape(53, -1)
    _, scale = frame(m.reshape(53, 6, 2))
    for f in range(3):
        rows = folds == f
        z = np.concatenate([np.ones((rows.sum(), 12, 1)), x[rows] - chunked.ref[:, None], (y - m)[rows][..., None]], -1)
        assert np.allclose(chunked.point[f], np.einsum("nqi,nqj->qij", z, z))
        v = np.concatenate([scale[rows, None], (y - m)[rows]], axis=1)
        assert np.allclose(chunked.resid[f], v.T @ v) and np.allclose(whole.resid[f], v.T @ v)
    assert chunked.rows.tolist() == np.bincount(folds).tolist()
    # the offset only conditions the sums: the fits agree whatever chunk it came from
    a, b = fit_point_ridge(whole), fit_point_ridge(chunked)
    assert np.allclose(a.weights, b.weights) and np.allclose(a.intercept, b.intercept)


def test_frame_is_a_similarity_invariant():
    rng = np.random.default_rng(1)
    truth, _, _ = faces(4, 9, rng)
    moved = 3.0 * truth + np.array([10.0, -5.0])
    c1, s1 = frame(truth)
    c2, s2 = frame(moved)
    assert np.allclose(s2, 3 * s1) and np.allclose(c2, 3 * c1 + [10.0, -5.0])
    n1 = normalised_runs(truth.reshape(4, -1, 1), c1, s1)
    n2 = normalised_runs(moved.reshape(4, -1, 1), c2, s2)
    assert np.allclose(n1, n2) and np.allclose((n1.reshape(4, 9, 2) ** 2).sum(-1).mean(-1), 1)


# ---------------------------------------------------------------- the per-coordinate ridge


def test_ridge_matches_sklearn_on_the_residual_from_the_runs_mean():
    rng = np.random.default_rng(2)
    truth, _, _ = faces(120, 4, rng)
    preds = noisy_runs(truth, (1.0, 1.5, 3.0), rng)
    st = accumulate(preds, truth, np.zeros(120, dtype=int), 1)
    x = np.stack([p.reshape(120, -1) for p in preds], -1)
    t = truth.reshape(120, -1) - x.mean(-1)
    for strength in (0.0, 1e-3, 0.1):
        (model,) = solve_point_ridge(st.point[0], st.ref, [strength])
        for q in range(8):
            xc = x[:, q] - x[:, q].mean(0)
            alpha = strength * np.trace(xc.T @ xc) / 3
            ref = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(x[:, q], t[:, q])
            assert np.allclose(model.weights[q], 1 / 3 + ref.coef_, atol=1e-6)
            assert np.allclose(model.intercept[q], ref.intercept_, atol=1e-4)
        direct = ((truth.reshape(120, -1) - model.predict(x)) ** 2).sum(0)
        assert np.allclose(point_sse(model, st.point[0], st.ref), direct)


def test_ridge_at_infinite_strength_is_the_runs_mean_plus_a_bias():
    rng = np.random.default_rng(3)
    truth, _, _ = faces(80, 5, rng)
    preds = [truth + 2.0 + rng.normal(0, 1, truth.shape), truth - 1.0 + rng.normal(0, 2, truth.shape)]
    st = accumulate(preds, truth, np.zeros(80, dtype=int), 1)
    (model,) = solve_point_ridge(st.point[0], st.ref, [np.inf])
    assert np.allclose(model.weights, 0.5)
    mean = (preds[0] + preds[1]) / 2
    assert np.allclose(model.intercept, (truth - mean).reshape(80, -1).mean(0))


def test_ridge_recovers_known_weights_and_biases():
    rng = np.random.default_rng(4)
    n, p = 3000, 6
    base, _, _ = faces(n, p, rng)
    preds = noisy_runs(base, (2.0, 3.0, 4.0), rng)
    w = rng.uniform(0.1, 0.6, (p, 2, 3))
    b = rng.uniform(-3, 3, (p, 2))
    truth = b + np.einsum("rnpc,pcr->npc", np.stack(preds), w) + rng.normal(0, 0.01, base.shape)
    folds = balanced_folds(n, 4, rng)
    score = nested_ridge(accumulate(preds, truth, folds, 4))
    assert np.allclose(score.model.weights.reshape(p, 2, 3), w, atol=2e-3)
    assert np.allclose(score.model.intercept.reshape(p, 2), b, atol=0.1)
    assert score.mse < 2e-4 and score.model.info["strength"] != "inf"


def test_ridge_undoes_a_runs_per_point_scale_and_bias():
    """One run that shrinks each point toward a point of its own and shifts it: the stacker inverts both."""
    rng = np.random.default_rng(5)
    n, p = 2000, 8
    truth, _, _ = faces(n, p, rng)
    scale = rng.uniform(0.7, 1.3, (p, 2))
    bias = rng.uniform(-5, 5, (p, 2))
    pred = scale * truth + bias + rng.normal(0, 0.05, truth.shape)
    folds = balanced_folds(n, 5, rng)
    st = accumulate([pred], truth, folds, 5)
    score = nested_ridge(st)
    assert np.allclose(score.model.weights.reshape(p, 2), 1 / scale, rtol=2e-3)
    assert np.allclose(score.model.intercept.reshape(p, 2), -bias / scale, atol=0.1)
    blend = nested_cv(Method.weights, st.grams, st.rows)
    assert score.mse < 0.01 and blend.mse > 10  # a blend of one run can't fix it


# ---------------------------------------------------------------- nested CV: exact, and honest


@pytest.mark.parametrize("kind", ["ridge", "pca-ridge"])
def test_nested_scores_equal_the_fold_models_applied_to_their_held_out_rows(kind):
    rng = np.random.default_rng(6)
    truth, _, _ = faces(240, 7, rng, smooth_modes(2, 7, rng))
    preds = noisy_runs(truth, (1.0, 1.5, 2.0), rng)
    folds = balanced_folds(240, 4, rng)
    st = accumulate(preds, truth, folds, 4, shape=kind == "pca-ridge")
    score = nested_ridge(st) if kind == "ridge" else nested_pca_ridge(st, preds, truth, folds)
    direct = held_out_sse(score, preds, truth, folds)
    assert np.allclose(score.fold_mse, direct / (np.bincount(folds) * 14))
    assert score.mse == pytest.approx(direct.sum() / truth.size)
    assert score.point_mse.mean() == pytest.approx(score.mse)
    in_sample = (truth.reshape(240, -1) - score.model.predict(np.stack([p.reshape(240, -1) for p in preds], -1))) ** 2
    assert score.in_sample_mse == pytest.approx(in_sample.mean())
    assert score.in_sample_mse <= score.mse


def leaky_fake_run(truth, real, folds, rng, fold: int = 0):
    """A run equal to the truth on ``fold`` and elsewhere as far from the real runs' mean as the truth, at random.

    A stacker fitted on other folds sees an extra run that is pure noise around the mean, and gives it no weight.
    One whose fit saw ``fold`` would learn that the run's deviation from the mean predicts the truth's.
    """
    mean = np.mean(real, axis=0)
    spread = (truth - mean).std(axis=0, keepdims=True)
    fake = mean + rng.normal(size=truth.shape) * spread
    fake[folds == fold] = truth[folds == fold]
    return fake


@pytest.mark.parametrize("kind", ["ridge", "pca-ridge"])
@pytest.mark.parametrize("leaky", [False, True])
def test_a_run_leaking_the_held_out_truth_scores_no_better(kind, leaky, monkeypatch):
    rng = np.random.default_rng(7)
    n = 900
    truth, _, _ = faces(n, 8, rng)
    real = noisy_runs(truth, (1.0, 1.5), rng)
    folds = balanced_folds(n, 3, rng)
    fake = leaky_fake_run(truth, real, folds, rng)

    def score(preds):
        st = accumulate(preds, truth, folds, 3, shape=kind == "pca-ridge")
        return nested_ridge(st) if kind == "ridge" else nested_pca_ridge(st, preds, truth, folds)

    baseline = score(real)
    if leaky:  # the mistake this test exists to catch: the held-out fold among the folds a model is fitted on
        monkeypatch.setattr(stack_nested, "training_folds", lambda held_out, folds: tuple(folds))
    with_fake = score([*real, fake])
    if leaky:
        assert with_fake.fold_mse[0] < 0.75 * baseline.fold_mse[0]  # so the honest assertions below can fail
    else:
        assert with_fake.fold_mse[0] > 0.97 * baseline.fold_mse[0]
        assert with_fake.mse > 0.99 * baseline.mse
        assert with_fake.in_sample_mse < with_fake.mse  # in-sample, the fake run does look useful


@pytest.mark.parametrize("kind", ["ridge", "pca-ridge"])
def test_a_fold_model_does_not_depend_on_its_held_out_rows(kind):
    rng = np.random.default_rng(8)
    n, k = 300, 3
    truth, _, _ = faces(n, 6, rng, smooth_modes(2, 6, rng))
    preds = noisy_runs(truth, (1.0, 2.0), rng)
    folds = balanced_folds(n, k, rng)

    def score(truth, preds):
        st = accumulate(preds, truth, folds, k, shape=kind == "pca-ridge")
        return nested_ridge(st) if kind == "ridge" else nested_pca_ridge(st, preds, truth, folds)

    before = score(truth, preds)
    held = folds == 1
    other_truth = truth.copy()
    other_truth[held] += rng.normal(0, 5, other_truth[held].shape) + 7.0  # anything at all on fold 1's rows
    other_preds = [p.copy() for p in preds]
    other_preds[0][held] = other_truth[held]
    after = score(other_truth, other_preds)
    x = np.stack([p.reshape(n, -1) for p in preds], -1)
    for fold in range(k):
        same = np.allclose(before.fold_models[fold].predict(x), after.fold_models[fold].predict(x), atol=1e-6)
        assert same == (fold == 1), fold
    assert after.fold_mse[1] != pytest.approx(before.fold_mse[1])


def test_nested_fits_see_only_the_training_folds(monkeypatch):
    rng = np.random.default_rng(9)
    n, k = 200, 4
    truth, _, _ = faces(n, 6, rng, smooth_modes(2, 6, rng))
    preds = noisy_runs(truth, (1.0, 2.0), rng)
    folds = balanced_folds(n, k, rng)
    full = accumulate(preds, truth, folds, k, shape=True)
    seen: dict[str, list[tuple[int, ...]]] = {"ridge": [], "basis": [], "correction": []}

    def spy(name, fit, what):
        def wrapped(st, *args, **kwargs):
            # what the fit is given holds the rows of these folds and no others
            seen[name].append(what(st))
            if name != "correction":
                assert len(st.point) == len(st.folds)
                assert np.array_equal(st.point, full.point[list(st.folds)])
            else:
                assert len(st.gg) == len(st.folds)
            return fit(st, *args, **kwargs)

        monkeypatch.setattr(stack_nested, fit.__name__, wrapped)

    spy("ridge", stack_nested.fit_point_ridge, lambda st: st.folds)
    spy("basis", stack_nested.fit_basis, lambda st: st.folds)
    spy("correction", stack_nested.fit_correction, lambda st: tuple(sorted(set(st.folds) | set(st.fitted_on))))
    score = nested_pca_ridge(full, preds, truth, folds)
    everything = tuple(range(k))
    for name, calls in seen.items():
        assert calls == [tuple(f for f in everything if f != held) for held in range(k)] + [everything], name
    for held, model in enumerate(score.fold_models):
        assert held not in model.fitted_on and held not in model.stage1.fitted_on
        assert held not in model.correction.basis.fitted_on
    assert score.model.fitted_on == everything


# ---------------------------------------------------------------- the shape correction


def test_basis_spans_a_shared_deformation():
    rng = np.random.default_rng(10)
    n, p = 400, 10
    truth, scale, _ = faces(n, p, rng)
    modes = smooth_modes(3, p, rng).reshape(3, -1)
    error = scale[:, None] * (rng.normal(0, 1, (n, 3)) @ modes) + rng.normal(0, 0.01, (n, 2 * p))
    pred = truth - error.reshape(n, p, 2)
    st = accumulate([pred], truth, np.zeros(n, dtype=int), 1, shape=True)
    basis = fit_basis(st, 3)
    overlap = np.linalg.svd(basis.components.T @ (modes.T / np.linalg.norm(modes, axis=1)), compute_uv=False)
    assert overlap.min() > 0.99  # cosines of the principal angles


def shrinking_runs(shrink: np.ndarray, n: int = 1500, p: int = 24, seed: int = 11):
    """Faces with three deformation modes and runs that each scale mode k by ``shrink[run, k]``, plus noise."""
    rng = np.random.default_rng(seed)
    modes = smooth_modes(3, p, rng)
    truth, scale, coeff = faces(n, p, rng, modes, jitter=2.0)
    preds = []
    for r, factors in enumerate(shrink):
        deformation = scale[:, None, None] * np.einsum("nk,kpc->npc", coeff * (factors - 1), modes)
        preds.append(truth + deformation + rng.normal(0, 0.3 * (1 + r), truth.shape))
    return truth, preds, balanced_folds(n, 4, rng)


def test_pca_ridge_corrects_errors_that_points_share():
    """Runs that each shrink whole-face deformations by their own factor: per-point weights can't undo it."""
    truth, preds, folds = shrinking_runs(np.array([[0.5, 0.8, 0.6], [0.7, 0.4, 0.9], [0.9, 0.6, 0.5]]))
    st = accumulate(preds, truth, folds, 4, shape=True)
    ridge = nested_ridge(st)
    pca = nested_pca_ridge(st, preds, truth, folds)
    blend = nested_cv(Method.weights, st.grams, st.rows)
    assert pca.mse < 0.3 * ridge.mse and ridge.mse < blend.mse
    assert pca.model.correction.strength != np.inf and pca.model.correction.k >= 3


def test_pca_ridge_is_no_worse_than_ridge_when_errors_are_independent():
    truth, preds, folds = shrinking_runs(np.ones((3, 3)))
    st = accumulate(preds, truth, folds, 4, shape=True)
    ridge, pca = nested_ridge(st), nested_pca_ridge(st, preds, truth, folds)
    assert pca.mse < 1.01 * ridge.mse


@pytest.mark.parametrize("kind", ["ridge", "pca-ridge"])
def test_two_folds_use_the_default_choices(kind):
    """With two folds, each outer fit has one fold: nothing to choose with, the defaults are used and recorded."""
    rng = np.random.default_rng(13)
    truth, _, _ = faces(200, 6, rng, jitter=1.0)
    preds = noisy_runs(truth, (1.0, 2.0), rng)
    folds = balanced_folds(200, 2, rng)
    st = accumulate(preds, truth, folds, 2, shape=kind == "pca-ridge")
    score = nested_ridge(st) if kind == "ridge" else nested_pca_ridge(st, preds, truth, folds)
    assert all(model.fitted_on == (1 - k,) for k, model in enumerate(score.fold_models))
    stage1 = [m if kind == "ridge" else m.stage1 for m in score.fold_models]
    assert all(m.info["cv_sse"] is None for m in stage1)
    assert score.model.fitted_on == (0, 1) and np.isfinite(score.mse)
    assert np.allclose(score.fold_mse, held_out_sse(score, preds, truth, folds) / (np.bincount(folds) * 12))
