"""kit import: standard landmark datasets (pts, wflw, csv) into the competition layout that every command reads."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.data.competition import Competition
from kit.data.folds import make_folds, read_groups
from kit.data.importers import CropSpec, cut_face, import_competition, read_faces, read_pts
from kit.errors import DataError

N_POINTS = 10


def _photo(path: Path, points: np.ndarray, size=(300, 400), seed=0) -> None:
    """A noisy photo with a bright dot at every point (so a test can find the points in the crop)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
    for x, y in points:
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    cv2.imwrite(str(path), image)


def _face_points(rng: np.random.Generator, centre=(200, 150), scale=60.0) -> np.ndarray:
    return np.asarray(centre) + rng.uniform(-scale, scale, (N_POINTS, 2))


def _pts_text(points: np.ndarray, wrapper: bool) -> str:
    body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
    return f"version: 1\nn_points: {len(points)}\n{{\n{body}}}\n" if wrapper else body


def make_pts_folder(root: Path, n_photos: int = 8, faces_per_photo: int = 2, seed: int = 0) -> Path:
    """Faces as 300-W lays them out: ``PHOTO_K.jpg`` + ``PHOTO_K.pts``, half the files with the wrapper."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for photo in range(n_photos):
        for k in range(1, faces_per_photo + 1):
            points = _face_points(rng, centre=(120 + 150 * (k - 1), 150), scale=40)
            _photo(root / f"{1000 + photo}_{k}.jpg", points, seed=photo)
            (root / f"{1000 + photo}_{k}.pts").write_text(_pts_text(points, wrapper=bool(photo % 2)))
    return root


def test_read_pts_with_and_without_wrapper(tmp_path):
    points = np.array([[1.5, 2.0], [3.0, 4.25], [5.0, 6.0]])
    bare, wrapped = tmp_path / "a.pts", tmp_path / "b.pts"
    bare.write_text(_pts_text(points, wrapper=False))
    wrapped.write_text(_pts_text(points, wrapper=True))
    np.testing.assert_allclose(read_pts(bare), points)
    np.testing.assert_allclose(read_pts(wrapped), points)


def test_cut_face_maps_points_to_the_crop():
    rng = np.random.default_rng(1)
    image = np.zeros((500, 700, 3), np.uint8)
    points = rng.uniform([250, 150], [450, 350], (6, 2))
    for x, y in points:
        cv2.circle(image, (round(x), round(y)), 6, (255, 255, 255), -1)
    box = np.array([180.0, 90.0, 520.0, 410.0])
    crop, mapped = cut_face(image, points, box, size=96)
    assert min(crop.shape[:2]) == 96
    for x, y in mapped:  # each dot's centre lands where its label says (within a pixel)
        patch = crop[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4, 0].astype(float)
        ys, xs = np.mgrid[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4]
        cx, cy = (patch * xs).sum() / patch.sum(), (patch * ys).sum() / patch.sum()
        assert abs(cx - x) < 1.0 and abs(cy - y) < 1.0


def test_pts_import_is_a_competition(tmp_path):
    src = make_pts_folder(tmp_path / "src")
    out = tmp_path / "comp"
    faces = read_faces("pts", [src])
    summary = import_competition(faces, out, CropSpec(size=64), test_fraction=0.25, n_requested=4)
    assert (summary.n_train, summary.n_test, summary.n_points) == (12, 4, N_POINTS)
    comp = Competition.load(out)
    assert comp.n_points == N_POINTS and len(comp.train.file_names) == 12 and len(comp.test.file_names) == 4
    answers = pd.read_csv(out / "private" / "test_landmarks.csv", sep="\t")
    assert list(answers["file_name"]) == list(comp.test.file_names)
    assert comp.test.indices.shape == (4, 4)
    # Faces of one photo share a group, and the test set holds whole photos.
    groups = read_groups(out / "train" / "groups.csv", comp.train.file_names)
    assert all(g == name.rsplit("_", 1)[0] for g, name in zip(groups, comp.train.file_names, strict=True))
    test_photos = {name.rsplit("_", 1)[0] for name in comp.test.file_names}
    assert not test_photos & set(groups)
    folds = make_folds(comp.train.file_names, k=3, seed=0, groups=groups)
    assert folds.groupby(groups)["fold"].nunique().max() == 1
    # Labels are integers in crop pixels, and each lands on its dot in the crop.
    train = pd.read_csv(out / "train" / "landmarks.csv", sep="\t")
    assert all(dtype.kind == "i" for dtype in train.dtypes.iloc[1:])
    image = cv2.imread(str(out / "train" / "images" / train["file_name"][0]))
    assert min(image.shape[:2]) == 64
    for x, y in train.iloc[0, 1:].to_numpy().reshape(-1, 2):
        assert image[int(y), int(x)].mean() > 100
    record = json.loads((out / "import.json").read_text())
    assert record["n_points"] == N_POINTS and record["crop"]["size"] == 64


def test_68_points_normalise_nme_by_the_outer_eye_corners(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        points = np.asarray((200, 150)) + rng.uniform(-60, 60, (68, 2))
        _photo(src / f"p{i}.jpg", points)
        (src / f"p{i}.pts").write_text(_pts_text(points, wrapper=True))
    summary = import_competition(read_faces("pts", [src]), tmp_path / "comp", CropSpec(size=48), test_fraction=0.25)
    assert summary.nme_points == (36, 45)
    assert (tmp_path / "comp" / "nme_points.txt").read_text().split() == ["36", "45"]


def test_jitter_is_seeded(tmp_path):
    src = make_pts_folder(tmp_path / "src", n_photos=4)
    faces = read_faces("pts", [src])
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        import_competition(faces, tmp_path / name, CropSpec(size=48, jitter=0.1, seed=seed), test_fraction=0.25)
        outs.append((tmp_path / name / "train" / "landmarks.csv").read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_wflw_lines(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "imgs" / "party").mkdir(parents=True)
    lines = []
    for i in range(3):
        faces = [_face_points(rng, centre=(100 + 200 * k, 150), scale=40) for k in range(2)]
        _photo(tmp_path / "imgs" / "party" / f"{i}.jpg", np.concatenate(faces), size=(300, 400))
        for points in faces:
            coords = " ".join(f"{v:.2f}" for v in points.ravel())
            lines.append(f"{coords} 1 2 3 4 0 0 0 0 0 0 party/{i}.jpg")
    table = tmp_path / "list.txt"
    table.write_text("\n".join(lines) + "\n")
    faces = read_faces("wflw", [table], tmp_path / "imgs")
    assert [f.name for f in faces[:2]] == ["0_1.jpg", "0_2.jpg"] and faces[0].group == faces[1].group
    summary = import_competition(faces[:4], tmp_path / "comp", CropSpec(size=48), test_faces=faces[4:], n_requested=3)
    assert summary.n_points == N_POINTS and summary.n_test == 2


@pytest.mark.parametrize("header", [True, False])
def test_csv_table(tmp_path, header):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(4):
        points = _face_points(rng)
        _photo(tmp_path / f"f{i}.png", points)
        rows.append(",".join([f"f{i}.png", *(f"{v:.1f}" for v in points.ravel())]))
    head = ["image," + ",".join(f"{a}{j}" for j in range(N_POINTS) for a in "xy")] if header else []
    (tmp_path / "faces.csv").write_text("\n".join(head + rows) + "\n")
    faces = read_faces("csv", [tmp_path / "faces.csv"])
    assert len(faces) == 4 and faces[0].name == "f0_1.jpg"
    summary = import_competition(faces, tmp_path / "comp", CropSpec(size=48, round_labels=False), test_fraction=0.25)
    assert summary.n_train == 3
    text = (tmp_path / "comp" / "train" / "landmarks.csv").read_text().splitlines()[1]
    assert "." in text.split("\t")[1]  # --no-round keeps sub-pixel labels


def _break(src: Path, how: str) -> str:
    """Damage one face of a pts folder; returns the text the error must contain."""
    if how == "missing image":
        (src / "1000_1.jpg").unlink()
        return "1000_1.pts: no image beside it"
    if how == "unreadable image":
        (src / "1001_1.jpg").write_bytes(b"not a jpeg at all" * 10)
        return "1001_1.jpg"
    if how == "wrong count":
        points = read_pts(src / "1001_2.pts")
        (src / "1001_2.pts").write_text(f"version: 1\nn_points: 12\n{{\n{_pts_text(points, False)}}}\n")
        return "1001_2.pts: declares n_points: 12 but holds 10 points"
    if how == "count differs":
        points = read_pts(src / "1002_1.pts")
        (src / "1002_1.pts").write_text(_pts_text(points[:8], False))
        return "1002_1.pts: 8 points"
    if how == "garbage":
        (src / "1002_2.pts").write_text("12.5 abc\n1 2\n")
        return "1002_2.pts: line 1: expected two numbers"
    if how == "far outside":
        points = read_pts(src / "1003_1.pts")
        points[4] = [5000.0, 10.0]
        (src / "1003_1.pts").write_text(_pts_text(points, False))
        return "1003_1.pts: point 4 (5000.0, 10.0) lies far outside its 400x300 photo"
    if how == "duplicate stems":
        other = src / "sub"
        other.mkdir()
        for suffix in (".jpg", ".pts"):
            (other / f"1000_1{suffix}").write_bytes((src / f"1000_1{suffix}").read_bytes())
        return "duplicate name '1000_1.jpg'"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["missing image", "unreadable image", "wrong count", "count differs", "garbage", "far outside", "duplicate stems"],
)
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, how):
    src = make_pts_folder(tmp_path / "src", n_photos=4)
    expected = _break(src, how)
    out = tmp_path / "comp"
    result = CliRunner().invoke(app, ["import", "pts", str(src), "--out", str(out), "--test-fraction", "0.25"])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and expected in " ".join(result.output.split())
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".comp")]  # no temporary folder left


def test_cli_then_kit_check_and_folds(tmp_path):
    src = make_pts_folder(tmp_path / "src", n_photos=6)
    out = tmp_path / "comp"
    runner = CliRunner()
    result = runner.invoke(
        app, ["import", "pts", str(src), "--out", str(out), "--test-fraction", "0.2", "--size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "from 5 photos" in result.output
    assert runner.invoke(app, ["check", str(out)]).exit_code == 0
    result = runner.invoke(app, ["folds", str(out), "--k", "3", "--seed", "0"])
    assert result.exit_code == 0 and "grouped" in result.output
    # Not over an existing folder without --force; --force replaces an earlier import only.
    again = ["import", "pts", str(src), "--out", str(out), "--test-fraction", "0.2"]
    assert runner.invoke(app, again).exit_code == 1
    assert runner.invoke(app, [*again, "--force"]).exit_code == 0
    assert not (out / "folds.csv").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["import", "pts", str(src), "--out", str(tmp_path / "other"), "--test-fraction", "0.2"])
    assert result.exit_code == 1 and (tmp_path / "other" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give the test set"),
        (["--test-fraction", "0.2", "--nme-points", "3"], "--nme-points"),
        (["--test-fraction", "0.2", "--margin", "0"], "margin must be positive"),
    ],
)
def test_cli_option_errors(tmp_path, args, message):
    src = make_pts_folder(tmp_path / "src", n_photos=2)
    result = CliRunner().invoke(app, ["import", "pts", str(src), "--out", str(tmp_path / "c"), *args])
    assert result.exit_code != 0 and message in result.output


def test_unknown_format_is_refused():
    with pytest.raises(DataError, match="unknown format"):
        read_faces("mat", [])
