"""Blending runs: weights fitted on OOF predictions, scored honestly by nested CV over the shared folds."""

from kit.blend.blend import BlendResult, RunScore, blend_runs, check_same_split
from kit.blend.nested import NestedScore, fold_point_grams, nested_cv
from kit.blend.weights import Fit, Method, fit, fit_hill_climb, fit_mean, fit_per_point, fit_weights

__all__ = [
    "BlendResult",
    "Fit",
    "Method",
    "NestedScore",
    "RunScore",
    "blend_runs",
    "check_same_split",
    "fit",
    "fit_hill_climb",
    "fit_mean",
    "fit_per_point",
    "fit_weights",
    "fold_point_grams",
    "nested_cv",
]
