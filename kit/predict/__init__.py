"""Prediction from finished runs: recompute OOF and test predictions with another TTA or decoder."""

from kit.predict.repredict import Repredicted, repredict

__all__ = ["Repredicted", "repredict"]
