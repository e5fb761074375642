"""The synthetic competition generator: layout, determinism, template symmetry, atomic writes."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from kit import io as kit_io
from kit.cli import app
from kit.errors import KitError
from kit.synth import competition, generate_competition, make_template

N_TRAIN, N_TEST, N_REQUESTED = 40, 8, 30


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _landmarks(rows: list[list[str]]) -> np.ndarray:
    return np.array([[int(v) for v in row[1:]] for row in rows]).reshape(len(rows), -1, 2)


@pytest.fixture(scope="module")
def comp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[int]]:
    out = tmp_path_factory.mktemp("synth") / "comp"
    calls: list[int] = []
    summary = generate_competition(
        out, n_train=N_TRAIN, n_test=N_TEST, seed=3, n_requested=N_REQUESTED, progress=calls.append
    )
    return out, summary, calls


def test_layout_and_headers(comp):
    out, summary, calls = comp
    p = 971
    assert sorted(str(f.relative_to(out)) for f in out.glob("*/*") if f.is_file()) == [
        "private/flip_permutation.txt",
        "private/test_landmarks.csv",
        "test/test_points.csv",
        "train/landmarks.csv",
    ]
    header, rows = _read_tsv(out / "train" / "landmarks.csv")
    assert len(header) == 1 + 2 * p
    assert header[:3] == ["file_name", "Point_M0_X", "Point_M0_Y"] and header[-1] == f"Point_M{p - 1}_Y"
    assert len(rows) == N_TRAIN and all(len(r) == 1 + 2 * p for r in rows)
    answers_header, answers = _read_tsv(out / "private" / "test_landmarks.csv")
    assert answers_header == header and len(answers) == N_TEST
    assert summary.n_train == N_TRAIN and summary.n_test == N_TEST and summary.n_points == p
    assert summary.images_per_second > 0 and 140 <= min(summary.min_size) <= max(summary.max_size) <= 450
    assert sum(calls) == N_TRAIN + N_TEST


def test_images_decode_and_match_names(comp):
    out, _, _ = comp
    names = set()
    for split, csv in (("train", "train/landmarks.csv"), ("test", "test/test_points.csv")):
        _, rows = _read_tsv(out / csv)
        listed = [r[0] for r in rows]
        assert sorted(listed) == sorted(f.name for f in (out / split / "images").iterdir())
        for name in listed:
            img = cv2.imread(str(out / split / "images" / name))
            assert img is not None and img.ndim == 3 and min(img.shape[:2]) >= 140
        names |= set(listed)
    assert len(names) == N_TRAIN + N_TEST  # unique across train and test


def test_requested_points(comp):
    out, _, _ = comp
    header, rows = _read_tsv(out / "test" / "test_points.csv")
    assert header == ["file_name", "point_index_list"]
    lists = [ast.literal_eval(r[1]) for r in rows]
    for idx in lists:
        assert len(idx) == N_REQUESTED == len(set(idx)) and all(0 <= i < 971 for i in idx)
    assert len({tuple(i) for i in lists}) == len(lists)
    _, answers = _read_tsv(out / "private" / "test_landmarks.csv")
    assert [r[0] for r in answers] == [r[0] for r in rows]


def test_faces_centred_some_points_outside(comp):
    out, _, _ = comp
    _, rows = _read_tsv(out / "train" / "landmarks.csv")
    pts = _landmarks(rows)
    sizes = np.array([cv2.imread(str(out / "train" / "images" / r[0])).shape[1::-1] for r in rows])
    rel = pts.mean(axis=1) / sizes
    assert np.all(np.abs(rel - 0.5) < 0.25) and np.all(np.abs(rel.mean(axis=0) - 0.5) < 0.08)
    outside = ((pts < 0) | (pts >= sizes[:, None, :])).any(axis=(1, 2))
    assert outside.any() and not outside.all()
    extent = (pts.max(axis=1) - pts.min(axis=1)) / sizes
    assert np.all(extent.max(axis=1) > 0.4)


def test_flip_permutation_file(comp):
    out, _, _ = comp
    perm = np.array([int(v) for v in (out / "private" / "flip_permutation.txt").read_text().split()])
    np.testing.assert_array_equal(perm, make_template(971).flip_permutation)


@pytest.mark.parametrize("n_points", [971, 150, 100])
def test_template_mirror_symmetric(n_points):
    t = make_template(n_points)
    perm = t.flip_permutation
    assert t.points3d.shape == (n_points, 3) and perm.shape == (n_points,)
    np.testing.assert_array_equal(perm[perm], np.arange(n_points))
    np.testing.assert_array_equal((t.points3d * [-1, 1, 1])[perm], t.points3d)
    xy = t.points2d
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(n_points)
    width = np.ptp(xy[:, 0])
    assert d.min() >= 0.005 * width
    assert set(np.unique(t.parts)) == set(range(len(t.part_names)))


def test_deterministic_and_seed_dependent(tmp_path):
    def run(name: str, seed: int) -> dict[str, bytes]:
        out = tmp_path / name
        generate_competition(out, n_train=4, n_test=2, seed=seed)
        return {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/landmarks.csv"] != c["train/landmarks.csv"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_other_point_count(tmp_path):
    out = tmp_path / "small"
    generate_competition(out, n_train=3, n_test=2, n_points=150, n_requested=10)
    header, rows = _read_tsv(out / "train" / "landmarks.csv")
    assert len(header) == 301 and all(len(r) == 301 for r in rows)
    assert len((out / "private" / "flip_permutation.txt").read_text().split()) == 150


def test_refuses_non_empty_and_bad_args(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="busy"):
        generate_competition(out, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="not a synthetic competition"):  # --force replaces only a synth folder
        generate_competition(out, n_train=1, n_test=1, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(ValueError, match="n_requested"):
        generate_competition(tmp_path / "x", n_train=1, n_test=1, n_points=100, n_requested=101)
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_competition(empty, n_train=1, n_test=1)
    assert (empty / "train" / "landmarks.csv").exists()


def test_failed_run_leaves_nothing(tmp_path):
    def boom(k: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_competition(tmp_path / "out", n_train=3, n_test=1, progress=boom)
    assert list(tmp_path.iterdir()) == []


SMALL = {"n_train": 3, "n_test": 1, "n_points": 100, "n_requested": 5}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_replaces_an_old_synthetic_competition(tmp_path):
    out = tmp_path / "comp"
    generate_competition(out, seed=1, **SMALL)
    (out / "train" / "extra.txt").write_text("stale")
    old = _snapshot(out)
    with pytest.raises(ValueError, match="already exists.*--force"):
        generate_competition(out, seed=2, **SMALL)
    assert _snapshot(out) == old
    generate_competition(out, seed=2, force=True, **SMALL)
    generate_competition(tmp_path / "fresh", seed=2, **SMALL)
    assert _snapshot(out) == _snapshot(tmp_path / "fresh")  # nothing of the old folder is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp", "fresh"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_forced_run_keeps_the_old_folder(tmp_path, monkeypatch, error):
    out = tmp_path / "comp"
    generate_competition(out, seed=1, **SMALL)
    old = _snapshot(out)
    calls = []
    render = competition.make_image

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise error("renderer failed")
        return render(*args, **kwargs)

    monkeypatch.setattr(competition, "make_image", failing)
    with pytest.raises(error):
        generate_competition(out, seed=2, force=True, **SMALL)
    assert len(calls) == 3
    assert _snapshot(out) == old
    assert [p.name for p in tmp_path.iterdir()] == ["comp"]  # no temporary folder left behind


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "comp"
    generate_competition(out, seed=1, **SMALL)
    old = _snapshot(out)
    replace = kit_io.os.replace  # the swap that moves the finished folder into place lives in kit.io

    def failing_replace(src, dst):
        if Path(src).name.endswith(".partial"):
            raise OSError("disk gone")
        return replace(src, dst)

    monkeypatch.setattr(kit_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        generate_competition(out, seed=2, force=True, **SMALL)
    monkeypatch.undo()
    assert _snapshot(out) == old
    assert [p.name for p in tmp_path.iterdir()] == ["comp"]


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where", ["train/new", "private", "other/deeper"])
def test_refuses_to_write_inside_a_competition(make_competition, where, force):
    tiny = make_competition()
    before = _snapshot(tiny.root)
    out = tiny.root / where
    with pytest.raises(KitError, match="inside the competition folder") as info:
        generate_competition(out, force=force, **SMALL)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert _snapshot(tiny.root) == before and not (tiny.root / "other").exists()


def test_force_does_not_replace_a_real_competition(make_competition):
    tiny = make_competition(private=False)  # the downloaded layout: no private answers
    before = _snapshot(tiny.root)
    with pytest.raises(ValueError, match="not a synthetic competition"):
        generate_competition(tiny.root, force=True, **SMALL)
    assert _snapshot(tiny.root) == before


def test_cli_synth_force_and_errors(tmp_path, make_competition):
    runner = CliRunner()
    out = tmp_path / "comp"
    args = ["synth", str(out), "--n-train", "3", "--n-test", "1", "--n-points", "100", "--n-requested", "5"]
    assert runner.invoke(app, [*args, "--seed", "1"]).exit_code == 0
    old = _snapshot(out)
    refused = runner.invoke(app, [*args, "--seed", "2"])
    assert refused.exit_code == 1 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert _snapshot(out) == old
    forced = runner.invoke(app, [*args, "--seed", "2", "--force"])
    assert forced.exit_code == 0, forced.output
    assert _snapshot(out) != old and sorted(p.name for p in tmp_path.iterdir()) == ["comp"]
    inside = runner.invoke(app, ["synth", str(out / "train" / "x"), "--force", "--n-train", "1", "--n-test", "1"])
    assert inside.exit_code == 1 and "inside the competition folder" in inside.stderr
    assert "Traceback" not in inside.output and not (out / "train" / "x").exists()
