"""The blend's and stack's record (``kit.ensemble.record``): written and read back whole, applied as the submission
and fold by fold as nested CV scored it, resolved from anywhere, and refused, in one line, when broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_stack import biased_runs, read_folds, write_competition

from kit.data.landmarks import read_test_points
from kit.ensemble import apply, apply_fold, blend_runs, read_record, stack_runs
from kit.ensemble.source import open_source
from kit.errors import KitError
from kit.submit.format import select_requested, validate_submission

ENSEMBLES = [("blend", "weights"), ("blend", "per-point"), ("stack", "ridge"), ("stack", "pca-ridge")]


def _make(kind: str, method: str, runs, root, out: Path, **kw):
    if kind == "blend":
        return blend_runs(runs, root, method=method, name=f"{kind}-{method}", out_dir=out, **kw)
    return stack_runs(runs, root, model=method, name=f"{kind}-{method}", out_dir=out, **kw)


@pytest.fixture
def made(tmp_path):
    """A competition, three runs and a record of each kind and method, made from the project folder."""
    root = tmp_path / "project" / "comp"
    truth, test_truth = write_competition(root)
    runs = biased_runs(root, truth, test_truth, sigmas=(1.0, 1.5, 2.0))
    return root, truth, runs


@pytest.mark.parametrize(("kind", "method"), ENSEMBLES)
def test_a_record_reads_back_whole_and_applies_as_its_submission(made, kind, method):
    root, truth, runs = made
    result = _make(kind, method, runs, root, root.parent / "subs")
    record = read_record(result.json)
    assert record.kind == kind and record.method.value == method and type(record).__name__ == f"{kind.title()}Record"
    assert record.member_paths(result.json) == [run.resolve() for run in runs]
    assert [run.path for run in record.member_runs(result.json)] == [run.resolve() for run in runs]
    assert record == read_record(result.json) and record.params == read_record(result.json).params
    assert record.cv == (
        getattr(result, f"{kind}_scores").mse,
        getattr(result, f"{kind}_scores").nme,
        getattr(result, f"{kind}_scores").failure_rate,
    )
    # the submission is the record applied to the runs' test predictions
    tests = [np.load(run / "test.npy") for run in runs]
    test_points = read_test_points(root / "test/test_points.csv", truth.shape[1])
    expected = select_requested(apply(record, tests), test_points)
    np.testing.assert_allclose(validate_submission(result.csv, test_points), expected, atol=1e-4)


@pytest.mark.parametrize(("kind", "method"), ENSEMBLES)
def test_fold_k_is_applied_with_the_model_nested_cv_scored_on_fold_k(made, kind, method):
    root, truth, runs = made
    result = _make(kind, method, runs, root, root.parent / "subs")
    record = read_record(result.json)
    _, folds = read_folds(root / "folds.csv")
    oofs = [np.load(run / "oof.npy") for run in runs]
    fold_mse = [
        np.mean((apply_fold(record, k, [oof[folds == k] for oof in oofs]) - truth[folds == k]) ** 2) for k in range(3)
    ]
    assert fold_mse == pytest.approx(result.fold_mse, rel=1e-5)
    assert not np.array_equal(apply_fold(record, 0, oofs), apply(record, oofs))  # not the all-folds model
    with pytest.raises(KitError, match=f"{kind} '{kind}-{method}': no fold 3 \\(fitted on 3 folds\\)"):
        apply_fold(record, 3, oofs)
    with pytest.raises(KitError, match="2 runs' predictions given, it has 3"):
        apply(record, oofs[:2])
    with pytest.raises(KitError, match=r"expected \(N, 8, 2\) each"):
        apply(record, [oof[:, :4] for oof in oofs])


def test_writing_a_record_again_gives_the_same_bytes(made):
    root, _, runs = made
    out = root.parent / "subs"
    first = _make("stack", "pca-ridge", runs, root, out)
    before = {path: path.read_bytes() for path in (first.json, first.npz, first.csv)}
    _make("stack", "pca-ridge", runs, root, out, force=True)
    assert {path: path.read_bytes() for path in before} == before


def test_a_record_moved_with_its_runs_resolves_them_from_any_working_directory(made, tmp_path, monkeypatch):
    root, _, _ = made
    monkeypatch.chdir(root.parent)  # runs and data given relative to the project folder
    result = stack_runs(["runs/run0", "runs/run1"], "comp", name="s", out_dir="subs")
    assert json.loads(result.json.read_text())["inputs"][0]["path"] == "../runs/run0"
    moved = tmp_path / "archive" / "project-copy"
    shutil.move(root.parent, moved)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    source = open_source(moved / "subs" / "s.json")
    assert [run.path for run in source.runs] == [(moved / "runs" / name).resolve() for name in ("run0", "run1")]
    tests = [np.load(run.path / "test.npy") for run in source.runs]
    np.testing.assert_array_equal(source.combine(tests), apply(source.record, tests))


def test_a_missing_or_retrained_run_is_refused_in_one_line_naming_the_record_and_the_run(made):
    root, _, runs = made
    result = _make("blend", "weights", runs, root, root.parent / "subs")
    shutil.move(runs[1], runs[1].with_name("gone"))
    with pytest.raises(KitError) as info:
        open_source(result.json)
    message = str(info.value)
    assert message.startswith(f"{result.json}: run 'run1' not found at {runs[1].resolve()}") and "\n" not in message
    shutil.move(runs[1].with_name("gone"), runs[1])
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    (runs[1] / "metrics.json").write_text(json.dumps(metrics | {"oof_mse": 0.5}))  # another run in its place
    with pytest.raises(KitError, match=f"{result.json}: run 'run1' at .* is not the run the blend was made of"):
        open_source(result.json)


def test_a_changed_or_missing_npz_is_refused_naming_it(made):
    root, _, runs = made
    result = _make("stack", "ridge", runs, root, root.parent / "subs")
    data = bytearray(result.npz.read_bytes())
    data[-100] ^= 1
    result.npz.write_bytes(bytes(data))
    with pytest.raises(KitError) as info:
        read_record(result.json)
    assert str(info.value).startswith(f"{result.npz}: sha256 ") and "stack-ridge.json records" in str(info.value)
    assert "\n" not in str(info.value)
    result.npz.unlink()
    with pytest.raises(KitError, match=f"{result.npz}: missing \\(the fitted parameters of stack-ridge.json\\)"):
        read_record(result.json)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r | {"colour": "red"}, "colour"),
        (lambda r: r | {"inputs": [r["inputs"][0] | {"colour": 1}, *r["inputs"][1:]]}, "inputs.0.colour"),
        (lambda r: r | {"stack_mse": "low"}, "stack_mse"),
        (lambda r: {k: v for k, v in r.items() if k != "fold_models"}, "fold_models"),
        (lambda r: {k: v for k, v in r.items() if k != "kind"}, "kind"),
        (lambda r: r | {"kind": "bagging"}, "kind"),
    ],
)
def test_an_unknown_missing_or_invalid_key_is_an_error_naming_it(made, edit, key):
    root, _, runs = made
    result = _make("stack", "ridge", runs, root, root.parent / "subs")
    result.json.write_text(json.dumps(edit(json.loads(result.json.read_text()))))
    with pytest.raises(KitError) as info:
        read_record(result.json)
    assert str(info.value).startswith(f"{result.json}: not a kit blend or stack record (key '{key}': ")
    assert "\n" not in str(info.value)
