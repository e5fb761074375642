"""The sweep file: pipelines with overrides and small grids, and an optional final blend, validated at load.

```yaml
pipelines:
  - pipeline: ../pipelines/demo_regression.yaml     # relative to this file
    set: [train.epochs=8]                             # like --set
    grid: {optim.lr: [1.0e-3, 3.0e-4]}                # two runs: demo_regression-lr1e-3, demo_regression-lr3e-4
  - pipeline: ../pipelines/demo_heatmap.yaml
blend: {method: weights, name: demo}
```

A grid expands to every combination of its values; each run is named ``NAME-<key><value>...`` after the last
part of each grid key (the whole dotted key where two grid keys end alike). An unknown key or a wrong type is an
error naming the key and the sweep file.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from kit.config import ConfigSection, Pipeline, load_pipeline
from kit.ensemble.weights import Method
from kit.errors import KitError
from kit.names import check_name


class SweepPipeline(ConfigSection):
    pipeline: Path  # a pipeline YAML, relative to the sweep file
    name: str | None = None  # the run name (default: the pipeline's name); grid runs append their values
    set: list[str] = Field(default_factory=list)  # section.key=value overrides, as with --set
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key -> values; one run per combination

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = next((key for key, values in grid.items() if not values), None)
        if empty is not None:
            raise ValueError(f"grid key '{empty}' has no values")
        return grid


class SweepBlend(ConfigSection):
    method: Method = Method.weights  # how the finished runs are weighted (see kit blend)
    name: str  # the submission's name: SUBMISSIONS/NAME.csv, .json and .png


class SweepFile(ConfigSection):
    pipelines: list[SweepPipeline] = Field(min_length=1)  # the runs to train, in this order
    blend: SweepBlend | None = None  # blend the finished runs at the end (replacing an earlier blend of that name)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its resolved pipeline and where it came from."""

    name: str
    pipeline: Pipeline  # resolved: the pipeline file, the entry's set, its grid values, the sweep's --set
    source: Path  # the pipeline YAML
    entry: int  # index in the sweep file's pipelines


@dataclass(frozen=True)
class Sweep:
    path: Path
    runs: list[PlannedRun]
    blend: SweepBlend | None


def _describe(error: ValidationError, source: Path) -> str:
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains the rest
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: key '{key}': {first['msg']}"


def read_sweep_file(path: str | Path) -> SweepFile:
    """Parse and validate a sweep file.

    Raises:
        KitError: missing file, invalid YAML, an unknown key or a wrong type (naming the key and the file).
    """
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: sweep file not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KitError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise KitError(f"{path}: top level must be a mapping with 'pipelines'")
    try:
        return SweepFile.model_validate(tree)
    except ValidationError as exc:
        raise KitError(_describe(exc, path)) from None


def format_value(value: Any) -> str:
    """A grid value as it appears in a run name: ``3e-4``, ``0.5``, ``32``, ``true``, ``resnet34``, ``96x48``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if 1e-2 <= abs(value) < 1e4:
            return f"{value:.6g}"
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def _labels(keys: list[str]) -> dict[str, str]:
    """The name label of each grid key: its last part, or the whole key where two keys end alike."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: tail if last.count(tail) == 1 else key for key, tail in zip(keys, last, strict=True)}


def _yaml_value(value: Any) -> str:
    """``value`` as the right-hand side of an override (read back with YAML, it is ``value`` again)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()


def expand_entry(entry: SweepPipeline) -> list[tuple[str, list[str]]]:
    """Every grid combination of the entry: (name suffix, overrides), in the order of the grid's values."""
    if not entry.grid:
        return [("", [])]
    keys = list(entry.grid)
    labels = _labels(keys)
    combos = []
    for values in itertools.product(*(entry.grid[key] for key in keys)):
        suffix = "-".join(f"{labels[key]}{format_value(v)}" for key, v in zip(keys, values, strict=True))
        combos.append((f"-{suffix}", [f"{key}={_yaml_value(v)}" for key, v in zip(keys, values, strict=True)]))
    return combos


def _override_keys(overrides: list[str]) -> set[str]:
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Load a sweep file and resolve every run's pipeline.

    Args:
        path: the sweep YAML.
        overrides: ``section.key=value`` applied to every pipeline of the sweep, after its own overrides (a key
            that is also a grid key is refused: the grid's runs would all be the same).

    Raises:
        KitError: the sweep file or a pipeline is invalid, a run name is not a plain name, or two runs share a name.
    """
    path = Path(path)
    spec = read_sweep_file(path)
    overrides = list(overrides or [])
    runs: list[PlannedRun] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(spec.pipelines):
        where = f"{path}: pipelines[{i}]"
        source = entry.pipeline if entry.pipeline.is_absolute() else path.parent / entry.pipeline
        if not source.is_file():
            raise KitError(f"{where}.pipeline: {source}: pipeline file not found")
        clash = sorted(_override_keys(overrides) & set(entry.grid))
        if clash:
            raise KitError(f"--set {clash[0]}: also a grid key of {where}; drop one of them")
        base = _load(source, entry.set + overrides, where)
        stem = check_name(entry.name or base.name, f"{where} run name")
        for suffix, grid_overrides in expand_entry(entry):
            name = check_name(stem + suffix, f"{where} run name")
            if name in seen:
                raise KitError(f"{where}: run name '{name}' is also made by pipelines[{seen[name]}]; set 'name'")
            seen[name] = i
            pipeline = _load(source, entry.set + grid_overrides + overrides, where).model_copy(update={"name": name})
            runs.append(PlannedRun(name=name, pipeline=pipeline, source=source, entry=i))
    if spec.blend is not None:
        check_name(spec.blend.name, f"{path}: blend.name")
    return Sweep(path=path, runs=runs, blend=spec.blend)


def _load(source: Path, overrides: list[str], where: str) -> Pipeline:
    import kit.models  # noqa: F401  (registers the model families' config sections)

    try:
        return load_pipeline(source, overrides)
    except KitError as exc:
        raise KitError(f"{where}: {exc}") from None
