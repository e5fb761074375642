"""The sweep file: schema errors name the key and the file, grids expand to named runs, --set reaches every run."""

from pathlib import Path

import pytest
from sweep_helpers import write_sweep

from kit.errors import KitError
from kit.sweep.spec import format_value, load_sweep

REPO = Path(__file__).parents[2]


def test_demo_sweep_lists_the_two_demo_pipelines_and_their_blend():
    sweep = load_sweep(REPO / "sweeps" / "demo.yaml")
    assert [run.name for run in sweep.runs] == ["demo_regression", "demo_heatmap"]
    assert [run.pipeline.model.family for run in sweep.runs] == ["regression", "heatmap"]
    assert sweep.blend.name == "demo" and sweep.blend.method.value == "weights"


def test_real_faces_sweep_runs_the_demo_recipes_with_finer_heatmaps():
    sweep = load_sweep(REPO / "sweeps" / "real_faces.yaml")
    assert [run.name for run in sweep.runs] == ["real_regression", "real_heatmap"]
    demo = {run.pipeline.model.family: run.pipeline for run in load_sweep(REPO / "sweeps" / "demo.yaml").runs}
    for run in sweep.runs:
        expected = demo[run.pipeline.model.family].model_dump(exclude={"name", "input"})
        assert run.pipeline.model_dump(exclude={"name", "input"}) == expected
    assert [run.pipeline.input.size for run in sweep.runs] == [96, 96]


def test_grid_expands_to_every_combination_with_plain_names(tmp_path):
    path = write_sweep(
        tmp_path,
        "pipelines:\n"
        "  - pipeline: a.yaml\n"
        "    set: [train.epochs=3]\n"
        "    grid: {optim.lr: [1.0e-3, 3.0e-4], train.batch_size: [16, 32]}\n"
        "  - pipeline: a.yaml\n"
        "    name: other\n",
        {"a.yaml": "name: a\n"},
    )
    sweep = load_sweep(path, ["train.seed=5"])
    names = [run.name for run in sweep.runs]
    assert names == [
        "a-lr1e-3-batch_size16",
        "a-lr1e-3-batch_size32",
        "a-lr3e-4-batch_size16",
        "a-lr3e-4-batch_size32",
        "other",
    ]
    by_name = {run.name: run.pipeline for run in sweep.runs}
    assert by_name["a-lr3e-4-batch_size32"].optim.lr == pytest.approx(3e-4)
    assert by_name["a-lr3e-4-batch_size32"].train.batch_size == 32
    assert by_name["a-lr3e-4-batch_size32"].name == "a-lr3e-4-batch_size32"
    assert all(p.train.seed == 5 for p in by_name.values())  # --set applies to every pipeline
    assert [p.train.epochs for p in by_name.values()] == [3, 3, 3, 3, 10]  # an entry's set is its own
    assert sweep.blend is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3e-4, "3e-4"),
        (1.0e-3, "1e-3"),
        (2.5e-5, "2.5e-5"),
        (0.5, "0.5"),
        (32, "32"),
        (True, "true"),
        ("resnet34", "resnet34"),
        ([96, 48], "96x48"),
        (0.0, "0"),
    ],
)
def test_grid_values_in_names(value, text):
    assert format_value(value) == text


def test_grid_keys_ending_alike_are_named_in_full(tmp_path):
    grid = "{augment.hflip: [0.0], tta.hflip: [true], optim.lr: [0.002]}"
    path = write_sweep(tmp_path, f"pipelines:\n  - pipeline: a.yaml\n    grid: {grid}\n", {"a.yaml": "name: a\n"})
    assert [run.name for run in load_sweep(path).runs] == ["a-augment.hflip0-tta.hfliptrue-lr2e-3"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pipelines:\n  - pipeline: a.yaml\n    gird: {optim.lr: [1]}\n", "unknown key 'pipelines.0.gird'"),
        ("pipelines:\n  - pipeline: a.yaml\nblend: {name: x, methd: mean}\n", "unknown key 'blend.methd'"),
        ("pipelines:\n  - pipeline: a.yaml\nblend: {name: x, method: median}\n", "key 'blend.method'"),
        ("pipelines: []\n", "key 'pipelines'"),
        ("pipelines:\n  - pipeline: a.yaml\n    grid: {optim.lr: []}\n", "grid key 'optim.lr' has no values"),
        ("pipelines:\n  - pipeline: a.yaml\n    grid: {optim.lr: 0.1}\n", "key 'pipelines.0.grid.optim.lr'"),
        ("pipeline: a.yaml\n", "unknown key 'pipeline'"),
        ("- a.yaml\n", "top level must be a mapping"),
        ("pipelines: [\n", "invalid YAML"),
        ("pipelines:\n  - pipeline: missing.yaml\n", "pipelines[0].pipeline: "),
        ("pipelines:\n  - pipeline: a.yaml\n    set: [optim.lrr=1]\n", "unknown key 'optim.lrr'"),
        ("pipelines:\n  - pipeline: a.yaml\n    grid: {optim.lr: [-1]}\n", "key 'optim.lr'"),
        ("pipelines:\n  - pipeline: a.yaml\n    name: ../up\n", "run name '../up'"),
        ("pipelines:\n  - pipeline: a.yaml\n  - pipeline: a.yaml\n", "run name 'a' is also made by pipelines[0]"),
        ("pipelines:\n  - pipeline: a.yaml\nblend: {name: a/b}\n", "blend.name"),
    ],
)
def test_sweep_file_errors_name_the_key_and_the_file(tmp_path, text, message):
    path = write_sweep(tmp_path, text, {"a.yaml": "name: a\n"})
    with pytest.raises(KitError, match=r"sweep\.yaml") as error:
        load_sweep(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_set_of_a_grid_key_is_refused(tmp_path):
    path = write_sweep(
        tmp_path, "pipelines:\n  - pipeline: a.yaml\n    grid: {optim.lr: [0.1, 0.2]}\n", {"a.yaml": "name: a\n"}
    )
    with pytest.raises(KitError, match=r"--set optim.lr: also a grid key of .*pipelines\[0\]"):
        load_sweep(path, ["optim.lr=0.3"])


def test_missing_sweep_file(tmp_path):
    with pytest.raises(KitError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")
