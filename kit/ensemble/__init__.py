"""Ensembles of finished runs, side by side: blends (weights fitted on OOF predictions, ``kit blend``) and stacks
(second-level models, ``kit stack``), both scored honestly by nested CV over the runs' shared folds and written as
one record (``kit.ensemble.record``) that ``kit infer``, ``kit pseudo`` and ``kit runs`` read.

The record's API is imported here; ``blend_runs`` and ``stack_runs`` (and their results) on first use, so that
reading a record does not load the fitting machinery.
"""

import importlib

from kit.ensemble.record import (
    BlendRecord,
    EnsembleRecord,
    StackRecord,
    apply,
    apply_fold,
    arrays_path,
    read_record,
    write_record,
)
from kit.ensemble.stack_nested import Model
from kit.ensemble.weights import Method

_LAZY = {
    "BlendResult": "kit.ensemble.blend",
    "blend_runs": "kit.ensemble.blend",
    "StackResult": "kit.ensemble.stack",
    "stack_runs": "kit.ensemble.stack",
}

__all__ = [
    "BlendRecord",
    "BlendResult",
    "EnsembleRecord",
    "Method",
    "Model",
    "StackRecord",
    "StackResult",
    "apply",
    "apply_fold",
    "arrays_path",
    "blend_runs",
    "read_record",
    "stack_runs",
    "write_record",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
