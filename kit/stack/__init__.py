"""Stacking runs: second-level models over OOF predictions, scored by nested CV against the best blend."""

from kit.stack.nested import StackScore, nested_pca_ridge, nested_ridge, training_folds
from kit.stack.ridge import PointRidge, fit_point_ridge, point_sse, solve_point_ridge
from kit.stack.shape import PcaRidge, ShapeBasis, ShapeCorrection, fit_basis, fit_correction, shape_stats
from kit.stack.stack import Model, StackResult, predict_test, stack_runs
from kit.stack.stats import FoldStats, accumulate, frame

__all__ = [
    "FoldStats",
    "Model",
    "PcaRidge",
    "PointRidge",
    "ShapeBasis",
    "ShapeCorrection",
    "StackResult",
    "StackScore",
    "accumulate",
    "fit_basis",
    "fit_correction",
    "fit_point_ridge",
    "frame",
    "nested_pca_ridge",
    "nested_ridge",
    "point_sse",
    "predict_test",
    "shape_stats",
    "solve_point_ridge",
    "stack_runs",
    "training_folds",
]
