"""Inference from trained models: TTA prediction, the mapping to original pixels, re-prediction and ``kit infer``.

Training imports this package; nothing here imports ``kit.train``.
"""

from __future__ import annotations

__all__ = ["Repredicted", "predict_points", "repredict"]


def __getattr__(name: str):
    # Lazy: ``kit.train`` imports the light modules of this package without loading the re-prediction machinery.
    if name in ("Repredicted", "repredict"):
        from kit.predict import repredict as module

        return getattr(module, name)
    if name == "predict_points":
        from kit.predict.tta import predict_points

        return predict_points
    raise AttributeError(name)
