"""Pseudo-labels: fold k trains on test images labelled only by the source's fold-k models; lineage and identity."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import kit.train.fold as fold_module
from kit.cli import app
from kit.config import load_pipeline
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import KitError
from kit.runs import RunDir, SplitInfo, load_run
from kit.synth import generate_competition
from kit.train import fold_train
from kit.train.pseudo import load_pseudo_labels, resolve

pytestmark = pytest.mark.slow  # trains models

TINY = [
    "model.backbone=test_resnet",
    "input.size=32",
    "input.pad=4",
    "train.batch_size=4",
    "train.epochs=1",
    "train.num_workers=0",
    "train.report_images=0",
    "augment.blur=0",
    "augment.noise=0",
]


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


def test_fold_k_is_trained_only_on_labels_of_fold_k_models(source, tmp_path, monkeypatch):
    base, root = source
    seen = {}
    real = fold_module.train_loader

    def spy(pipeline, data, rows, device, seed, dist=fold_module.DistInfo(), pseudo=None):
        fold = int(data.folds[np.setdiff1d(np.arange(len(data.folds)), rows)][0])  # the held-out fold
        seen[fold] = pseudo
        return real(pipeline, data, rows, device, seed, dist, pseudo)

    monkeypatch.setattr(fold_module, "train_loader", spy)
    pipeline = _load(tmp_path, "p", [f"pseudo.source={base / 'runs' / 'a'}"])
    metrics = fold_train(pipeline, root, out_dir=tmp_path / "runs")
    assert sorted(seen) == [0, 1]
    for fold, (rows, labels) in seen.items():
        assert len(rows) == 8
        np.testing.assert_array_equal(labels, 1000.0 * (fold + 1))  # run a's fold-k models, and no other fold's
    assert metrics.lineage == (str((base / "runs" / "a").resolve()),)
    assert load_run(tmp_path / "runs" / "p").split == load_run(base / "runs" / "a").split  # blendable


def test_blend_sources_are_weighted_and_filtered_by_their_spread(source, tmp_path):
    base, root = source
    record = {
        "inputs": [{"run": "a", "path": str(base / "runs" / "a")}, {"run": "b", "path": str(base / "runs" / "b")}],
        "weights": {"a": 0.25, "b": 0.75},
    }
    (tmp_path / "blend.json").write_text(json.dumps(record))
    comp = Competition.load(root)
    pipeline = resolve(_load(tmp_path, "p", [f"pseudo.source={tmp_path / 'blend.json'}"]))
    labels = load_pseudo_labels(pipeline.pseudo, comp, SplitInfo.of(comp), 2)
    for fold in (0, 1):
        np.testing.assert_allclose(labels.for_fold(fold)[1], 1000.0 * (fold + 1) + 0.75)
    # The runs disagree by 1 px in x and y everywhere: a spread of sqrt(0.25 + 0.25) = 0.71 px.
    strict = resolve(_load(tmp_path, "p", [f"pseudo.source={tmp_path / 'blend.json'}", "pseudo.max_spread=0.6"]))
    strict_labels = load_pseudo_labels(strict.pseudo, comp, SplitInfo.of(comp), 2)
    assert all(len(strict_labels.for_fold(fold)[0]) == 0 for fold in (0, 1))
    loose = resolve(_load(tmp_path, "p", [f"pseudo.source={tmp_path / 'blend.json'}", "pseudo.max_spread=0.8"]))
    loose_labels = load_pseudo_labels(loose.pseudo, comp, SplitInfo.of(comp), 2)
    assert all(len(loose_labels.for_fold(fold)[0]) == 8 for fold in (0, 1))
    with pytest.raises(KitError, match=r"pseudo.max_spread: .*/a is one run"):
        resolve(_load(tmp_path, "p", [f"pseudo.source={base / 'runs' / 'a'}", "pseudo.max_spread=1"]))


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


def test_cli_names_the_run_and_it_blends_with_its_source(source, tmp_path):
    base, root = source
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
            str(base / "runs" / "a"),
            "--out",
            str(tmp_path / "runs"),
            *sum((["--set", s] for s in TINY), []),
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
    weights = [0.2, np.array([0.1, 0.3, 0.5, 0.7]), 0.4]  # a per-point weight too

    def member(r):
        run = SimpleNamespace(fold_predictions=lambda fold, n_points: (None, tests[r, fold]))
        return SimpleNamespace(run=run, weight=weights[r])

    labels = PseudoLabels(tuple(member(r) for r in range(3)), 4, 11, max_spread, 1.0, ("a", "b", "c"))
    monkeypatch.setattr(kit.io, "CHUNK_BYTES", 3 * 4 * 2 * 4 * 3)  # 3 rows of the 3 runs a chunk
    advanced = []
    for fold in (0, 1):
        keep, points = labels.for_fold(fold, advanced.append)
        w = np.stack([np.broadcast_to(np.asarray(v, np.float64), (4,)) for v in weights])[:, None, :, None]
        stack = tests[:, fold].astype(np.float64)
        np.testing.assert_array_equal(points, (w * stack).sum(axis=0).astype(np.float32))
        spread = np.sqrt(stack.var(axis=0).sum(axis=-1).mean(axis=-1))
        expected = np.arange(11) if max_spread is None else np.flatnonzero(spread <= max_spread)
        np.testing.assert_array_equal(keep, expected)
        assert 0 < len(expected) < 11 or max_spread is None
    assert advanced == [3, 3, 3, 2] * 2
