"""Pseudo-labels: fold k trains on test images labelled only by the source's fold-k models (a blend's or stack's
combined by its model fitted without fold k); lineage and identity."""

import numpy as np
import pytest
from tiny import set_args, tiny_settings
from typer.testing import CliRunner

import kit.train.fold as fold_module
from kit.cli import app
from kit.config import PseudoConfig, load_pipeline
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.ensemble import apply_fold, blend_runs, read_record, stack_runs
from kit.errors import KitError
from kit.runs import RunDir, SplitInfo, load_run
from kit.synth import generate_competition
from kit.train import fold_train
from kit.train.pseudo import load_pseudo_labels, resolve

pytestmark = pytest.mark.slow  # trains models

TINY = tiny_settings({"train.batch_size": 4})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A competition and two finished source runs whose fold-k test predictions carry their fold number."""
    base = tmp_path_factory.mktemp("pseudo")
    root = base / "c"
    generate_competition(root, n_train=12, n_test=8, seed=6, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=2, seed=0))
    for name, seed in (("a", 0), ("b", 1)):
        fold_train(_load(base, name, [f"train.seed={seed}"]), root, out_dir=base / "runs")
        run = RunDir(base / "runs" / name)
        for fold in (0, 1):  # mark each fold's test predictions: 1000 * (fold + 1), plus the run's offset
            test = np.load(run.fold_dir(fold) / "test.npy")
            np.save(run.fold_dir(fold) / "test.npy", np.full_like(test, 1000.0 * (fold + 1) + seed))
    return base, root


def _load(base, name, extra=()):
    path = base / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{pretrained: {{source: none}}}}\n")
    return load_pipeline(path, [*TINY, *extra])


def _fold_tests(base, fold):
    return [RunDir(base / "runs" / name).fold_predictions(fold, 100)[1] for name in ("a", "b")]


@pytest.mark.parametrize("kind", ["run", "stack"])
def test_fold_k_is_trained_only_on_labels_of_fold_k_models(source, tmp_path, monkeypatch, kind):
    base, root = source
    seen = {}
    real = fold_module.train_loader

    def spy(pipeline, data, rows, device, seed, dist=fold_module.DistInfo(), pseudo=None):
        fold = int(data.folds[np.setdiff1d(np.arange(len(data.folds)), rows)][0])  # the held-out fold
        seen[fold] = pseudo
        return real(pipeline, data, rows, device, seed, dist, pseudo)

    monkeypatch.setattr(fold_module, "train_loader", spy)
    labeller = base / "runs" / "a"
    if kind == "stack":
        labeller = stack_runs([base / "runs" / "a", base / "runs" / "b"], root, out_dir=tmp_path / "subs").json
    pipeline = _load(tmp_path, "p", [f"pseudo.source={labeller}"])
    metrics = fold_train(pipeline, root, out_dir=tmp_path / "runs")
    assert sorted(seen) == [0, 1]
    for fold, (rows, labels) in seen.items():
        assert len(rows) == 8
        if kind == "run":
            np.testing.assert_array_equal(labels, 1000.0 * (fold + 1))  # run a's fold-k models, and no other fold's
            continue
        # the stacker fitted without fold k, on the fold-k models' predictions: intercept + weights . runs
        params = read_record(labeller).params
        weights, intercept = params[f"fold{fold}.weights"], params[f"fold{fold}.intercept"]  # (Q, R), (Q,)
        expected = intercept + weights @ (1000.0 * (fold + 1) + np.array([0.0, 1.0]))  # run b is 1 px off
        np.testing.assert_allclose(labels, np.broadcast_to(expected.reshape(100, 2), labels.shape), atol=1e-3)
        other = read_record(labeller).params[f"fold{1 - fold}.weights"]
        assert not np.allclose(weights, other)  # each fold its own stacker
    runs = ("a",) if kind == "run" else ("a", "b")
    assert metrics.lineage == tuple(str((base / "runs" / name).resolve()) for name in runs)
    assert load_run(tmp_path / "runs" / "p").split == load_run(base / "runs" / "a").split  # blendable


def test_blend_sources_are_weighted_by_fold_and_filtered_by_their_spread(source, tmp_path, monkeypatch):
    base, root = source
    comp = Competition.load(root)
    monkeypatch.chdir(base)  # the blend names its runs relative to where it was made
    blend = blend_runs(["runs/a", "runs/b"], root, method="weights", out_dir=tmp_path / "subs")
    monkeypatch.chdir(tmp_path)  # and is used from anywhere
    pipeline = resolve(_load(tmp_path, "p", [f"pseudo.source={blend.json}"]))
    labels = load_pseudo_labels(pipeline.pseudo, comp, SplitInfo.of(comp), 2)
    record = read_record(blend.json)
    for fold in (0, 1):
        w = record.params[f"fold{fold}.weights"]  # fitted without fold k
        np.testing.assert_allclose(labels.for_fold(fold)[1], 1000.0 * (fold + 1) + w[1], atol=1e-3)
        np.testing.assert_array_equal(labels.for_fold(fold)[1], apply_fold(record, fold, _fold_tests(base, fold)))
    # The runs disagree by 1 px in x and y everywhere: a spread of sqrt(0.25 + 0.25) = 0.71 px.
    strict = resolve(_load(tmp_path, "p", [f"pseudo.source={blend.json}", "pseudo.max_spread=0.6"]))
    strict_labels = load_pseudo_labels(strict.pseudo, comp, SplitInfo.of(comp), 2)
    assert all(len(strict_labels.for_fold(fold)[0]) == 0 for fold in (0, 1))
    loose = resolve(_load(tmp_path, "p", [f"pseudo.source={blend.json}", "pseudo.max_spread=0.8"]))
    loose_labels = load_pseudo_labels(loose.pseudo, comp, SplitInfo.of(comp), 2)
    assert all(len(loose_labels.for_fold(fold)[0]) == 8 for fold in (0, 1))
    with pytest.raises(KitError, match=r"pseudo.max_spread: .*/a is one run"):
        resolve(_load(tmp_path, "p", [f"pseudo.source={base / 'runs' / 'a'}", "pseudo.max_spread=1"]))


def test_an_ensemble_of_another_split_or_with_a_missing_run_is_refused_in_one_line(source, tmp_path):
    base, root = source
    comp = Competition.load(root)
    stack = stack_runs([base / "runs" / "a", base / "runs" / "b"], root, out_dir=tmp_path / "subs")
    cfg = PseudoConfig(source=stack.json)
    other = SplitInfo.of(comp).model_copy(update={"folds_sha256": "0" * 64})
    with pytest.raises(KitError) as info:
        load_pseudo_labels(cfg, comp, other, 2)
    assert str(info.value).startswith(f"{stack.json}: a stack fitted on other data or folds than {root}")
    assert "fold k's from models that never saw fold k" in str(info.value) and "\n" not in str(info.value)
    moved = stack.json.read_text().replace('"../', '"../../')  # the record alone moved: its runs are not there
    (tmp_path / "subs" / "moved.json").write_text(moved)
    with pytest.raises(KitError, match=r"moved.json: run 'a' not found at .*/a \(moved or deleted"):
        resolve(_load(tmp_path, "p", [f"pseudo.source={tmp_path / 'subs' / 'moved.json'}"]))


def test_weight_draws_a_fraction_of_the_labelled_images_each_epoch(source, tmp_path):
    base, root = source
    pipeline = _load(tmp_path, "half", [f"pseudo.source={base / 'runs' / 'a'}", "pseudo.weight=0.5"])
    fold_train(pipeline, root, out_dir=tmp_path / "runs", folds="0")
    summary = RunDir(tmp_path / "runs" / "half").read_fold(0)
    assert summary.history[0].train_images == (6 + 4) // 4 * 4  # 6 training rows + half of 8 test images, full batches


def test_a_retrained_source_changes_the_identity(source, tmp_path):
    base, root = source
    pipeline = resolve(_load(tmp_path, "p", [f"pseudo.source={base / 'runs' / 'a'}"]))
    other = resolve(_load(tmp_path, "p", [f"pseudo.source={base / 'runs' / 'b'}"]))
    assert pipeline.pseudo.source_sha256 != other.pseudo.source_sha256
    assert resolve(pipeline) == pipeline  # resolving twice changes nothing


@pytest.mark.parametrize("kind", ["run", "stack"])
def test_cli_names_the_run_and_it_blends_with_its_source(source, tmp_path, kind):
    base, root = source
    labeller = base / "runs" / "a"
    if kind == "stack":
        labeller = stack_runs([base / "runs" / "a", base / "runs" / "b"], root, out_dir=tmp_path / "subs").json
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmodel: {pretrained: {source: none}}\n")
    result = CliRunner().invoke(
        app,
        [
            "pseudo",
            str(path),
            "--data",
            str(root),
            "--from",
            str(labeller),
            "--out",
            str(tmp_path / "runs"),
            *set_args(TINY),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pseudo-labels from" in result.output
    run = tmp_path / "runs" / "p-pseudo"
    blend = CliRunner().invoke(
        app,
        [
            "blend",
            str(base / "runs" / "a"),
            str(run),
            "--data",
            str(root),
            "--out-dir",
            str(tmp_path / "subs"),
            "--name",
            "mix",
        ],
    )
    assert blend.exit_code == 0, blend.output


@pytest.mark.parametrize("max_spread", [None, 1.1])
def test_a_folds_labels_read_in_row_chunks_equal_the_whole_array_sums(monkeypatch, max_spread):
    from types import SimpleNamespace

    import kit.io
    from kit.train.pseudo import PseudoLabels

    rng = np.random.default_rng(0)
    tests = rng.normal(100, 1, (3, 2, 11, 4, 2)).astype(np.float32)  # run, fold, test row, point, xy
    weights = np.stack([np.full(4, 0.2), np.array([0.1, 0.3, 0.5, 0.7]), np.full(4, 0.4)])[:, None, :, None]

    def run(r):
        return SimpleNamespace(fold_predictions=lambda fold, n_points: (None, tests[r, fold]))

    def combine_fold(fold, block):  # per-point weights, fold 1's doubled: the fold's model
        return ((1 + fold) * weights * np.stack(block)).sum(axis=0).astype(np.float32)

    source = SimpleNamespace(runs=tuple(run(r) for r in range(3)), combine_fold=combine_fold)
    labels = PseudoLabels(source, 4, 11, max_spread, 1.0, ("a", "b", "c"))
    monkeypatch.setattr(kit.io, "CHUNK_BYTES", 3 * 4 * 2 * 4 * 3)  # 3 rows of the 3 runs a chunk
    advanced = []
    for fold in (0, 1):
        keep, points = labels.for_fold(fold, advanced.append)
        stack = tests[:, fold].astype(np.float64)
        np.testing.assert_array_equal(points, ((1 + fold) * weights * stack).sum(axis=0).astype(np.float32))
        spread = np.sqrt(stack.var(axis=0).sum(axis=-1).mean(axis=-1))
        expected = np.arange(11) if max_spread is None else np.flatnonzero(spread <= max_spread)
        np.testing.assert_array_equal(keep, expected)
        assert 0 < len(expected) < 11 or max_spread is None
    assert advanced == [3, 3, 3, 2] * 2
