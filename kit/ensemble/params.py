"""A blend's or stack's fitted parameters as named arrays (its ``NAME.npz``), and the predictors they make.

Every model of a record is stored under a key: ``all`` the model fitted on all folds (applied to new predictions),
``fold{k}`` the model fitted without fold k (fold k's nested-CV model). A blend stores ``KEY.weights``, (R,) or (P, R)
per point; a stacker ``KEY.weights`` (Q, R) and ``KEY.intercept`` (Q,) per coordinate (Q = 2P, point-major), and for
``pca-ridge`` its correction's leading basis ``KEY.components`` (Q, K) and coefficients ``KEY.theta`` (K, 1 + R*K).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial

import numpy as np

from kit.ensemble.nested import blend_coordinates
from kit.ensemble.ridge import PointRidge
from kit.ensemble.shape import PcaRidge, ShapeBasis, ShapeCorrection

ALL = "all"  # the model fitted on all folds

# A model's predictions (n, Q) from the runs' coordinates, run-major (R, n, Q), float64.
Predictor = Callable[[np.ndarray], np.ndarray]


class Params(Mapping[str, np.ndarray]):
    """Named arrays, read-only, equal when every array is."""

    def __init__(self, arrays: Mapping[str, np.ndarray] = ()):
        self._arrays = {name: np.array(array) for name, array in dict(arrays).items()}  # copies
        for array in self._arrays.values():
            array.flags.writeable = False

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self.keys() == other.keys() and all(np.array_equal(self[k], other[k]) for k in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Params({', '.join(f'{k}: {v.shape}' for k, v in self._arrays.items())})"


def fold_key(k: int) -> str:
    """The key of the model fitted without fold ``k``."""
    return f"fold{k}"


def model_keys(n_folds: int) -> tuple[str, ...]:
    return (ALL, *(fold_key(k) for k in range(n_folds)))


def blend_params(weights: np.ndarray, fold_weights: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """A blend's weights, (R,) or (P, R), fitted on all folds and without each fold."""
    models = [weights, *fold_weights]
    return {
        f"{key}.weights": np.asarray(w, np.float64)
        for key, w in zip(model_keys(len(fold_weights)), models, strict=True)
    }


def stacker_params(model: PointRidge | PcaRidge, fold_models: Sequence[PointRidge | PcaRidge]) -> dict[str, np.ndarray]:
    """A stacker's arrays, fitted on all folds and without each fold."""
    params = {}
    for key, fitted in zip(model_keys(len(fold_models)), [model, *fold_models], strict=True):
        stage1 = fitted.stage1 if isinstance(fitted, PcaRidge) else fitted
        params[f"{key}.weights"], params[f"{key}.intercept"] = stage1.weights, stage1.intercept
        if isinstance(fitted, PcaRidge):
            correction = fitted.correction
            params[f"{key}.components"] = correction.basis.components[:, : correction.k]
            params[f"{key}.theta"] = correction.theta
    return {name: np.asarray(array, np.float64) for name, array in params.items()}


def expected_shapes(kind: str, method: str, n_runs: int, n_points: int) -> dict[str, Callable[[tuple], bool]]:
    """Each array of one model (by suffix) and whether a shape fits it."""
    q = 2 * n_points
    if kind == "blend":
        return {"weights": lambda s: s in ((n_runs,), (n_points, n_runs))}
    shapes = {"weights": lambda s: s == (q, n_runs), "intercept": lambda s: s == (q,)}
    if method == "pca-ridge":
        shapes["components"] = lambda s: len(s) == 2 and s[0] == q and 1 <= s[1] <= q
        shapes["theta"] = lambda s: len(s) == 2 and s[1] == 1 + n_runs * s[0]
    return shapes


def check_params(
    params: Mapping[str, np.ndarray], kind: str, method: str, n_runs: int, n_points: int, n_folds: int
) -> str | None:
    """What is wrong with ``params`` for a record of these sizes (None: nothing)."""
    shapes = expected_shapes(kind, method, n_runs, n_points)
    for key in model_keys(n_folds):
        for suffix, fits in shapes.items():
            name = f"{key}.{suffix}"
            if name not in params:
                return f"no array '{name}'"
            array = params[name]
            if not fits(array.shape):
                return f"array '{name}' has shape {array.shape}, not that of {n_runs} runs and {n_points} points"
            if not np.isfinite(array).all():
                return f"array '{name}' is not finite"
    if kind == "stack" and method == "pca-ridge":
        for key in model_keys(n_folds):
            if params[f"{key}.theta"].shape[0] != params[f"{key}.components"].shape[1]:
                return f"arrays '{key}.theta' and '{key}.components' disagree on the number of components"
    return None


def predictor(params: Mapping[str, np.ndarray], kind: str, key: str) -> Predictor:
    """The model ``key`` of ``params`` as a function of the runs' coordinates (R, n, Q) -> (n, Q)."""
    if kind == "blend":
        return partial(blend_coordinates, weights=params[f"{key}.weights"])
    stage1 = PointRidge(params[f"{key}.weights"], params[f"{key}.intercept"], strength=np.nan, fitted_on=())
    if f"{key}.theta" not in params:
        return stage1.predict_runs
    components, theta = params[f"{key}.components"], params[f"{key}.theta"]
    k = components.shape[1]
    basis = ShapeBasis(components, np.full(k, np.nan), fitted_on=())
    return PcaRidge(stage1, ShapeCorrection(basis, k, np.nan, theta, fitted_on=())).predict_runs
