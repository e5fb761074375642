"""``kit check``, ``kit folds`` and ``kit score`` through the CLI, on tiny competitions corrupted one way each."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from test_images import bomb_png, corrupt_jpeg, hostile_png
from typer.testing import CliRunner

import kit.data.check as check_module
from kit.cli import app
from kit.data.flip import load_permutation
from kit.data.landmarks import read_test_points
from kit.submit.format import write_submission

runner = CliRunner()


def kit(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one ``error:`` line on stderr (a progress bar may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def edit_line(path, line_no: int, edit) -> None:
    """Apply ``edit(fields) -> fields`` to the TAB-separated line ``line_no`` (1-based) of ``path``."""
    lines = path.read_text().split("\n")
    lines[line_no - 1] = "\t".join(edit(lines[line_no - 1].split("\t")))
    path.write_text("\n".join(lines))


def set_field(col: int, value: str):
    def edit(fields):
        fields[col] = value
        return fields

    return edit


def test_check_valid_competition_prints_summary(make_competition):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    result = kit("check", comp.root)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "6 images, 12 points each" in out
    assert "3 images, 4 requested points each" in out
    assert "40x48 to 40x48 (HxW)" in out
    assert "flip         derived" in out and "matches private/flip_permutation.txt" in out
    stored = np.loadtxt(comp.root / "flip_permutation.txt", dtype=np.int64)
    np.testing.assert_array_equal(stored, comp.perm)


def test_check_reports_a_layout_without_mirror_symmetry(make_competition):
    comp = make_competition(n_train=8, n_points=40, private=False)  # random 12-point layouts often pass as symmetric
    rng = np.random.default_rng(1)
    points = rng.integers(0, 40, comp.train_points.shape)
    for row, values in enumerate(points, start=2):
        edit_line(comp.train_csv, row, lambda f, v=values: [f[0], *map(str, v.reshape(-1).tolist())])
    result = kit("check", comp.root)
    assert result.exit_code == 0, result.stderr
    assert "flip         not derived: the mean shape is not mirror-symmetric" in result.stdout
    assert not (comp.root / "flip_permutation.txt").exists()


def test_check_accepts_trailing_tabs(make_competition):
    comp = make_competition()
    text = comp.train_csv.read_text().replace("\n", "\t\n")
    comp.train_csv.write_text(text.replace("Point_M11_Y\t\n", "Point_M11_Y\n"))
    result = kit("check", comp.root)
    assert result.exit_code == 0, result.stderr


# (description, corrupt(comp), file name expected in the message, expected message text)
CORRUPTIONS = [
    (
        "wrong header column",
        lambda c: edit_line(c.train_csv, 1, set_field(3, "Point_M1_Z")),
        "landmarks.csv",
        "line 1, column 4: header is 'Point_M1_Z', expected 'Point_M1_X'",
    ),
    (
        "header without file_name",
        lambda c: edit_line(c.train_csv, 1, set_field(0, "image")),
        "landmarks.csv",
        "line 1, column 1: header must start with 'file_name'",
    ),
    (
        # pandas with index_col=False silently drops the extra field of the first data row
        "extra field on the first row",
        lambda c: edit_line(c.train_csv, 2, lambda f: [*f, "7"]),
        "landmarks.csv",
        "line 2 has 26 columns, expected 25",
    ),
    (
        "extra field on a later row",
        lambda c: edit_line(c.train_csv, 4, lambda f: [*f, "7"]),
        "landmarks.csv",
        "line 4 has 26 columns, expected 25",
    ),
    (
        # pandas fills a short row with NaN silently
        "missing field",
        lambda c: edit_line(c.train_csv, 3, lambda f: f[:-1]),
        "landmarks.csv",
        "line 3 has 24 columns, expected 25",
    ),
    (
        "text in a coordinate",
        lambda c: edit_line(c.train_csv, 3, set_field(6, "abc")),
        "landmarks.csv",
        "line 3, column 'Point_M2_Y': not a number: 'abc'",
    ),
    (
        "empty coordinate",
        lambda c: edit_line(c.train_csv, 5, set_field(2, "")),
        "landmarks.csv",
        "line 5, column 'Point_M0_Y': missing value",
    ),
    (
        "infinite coordinate",
        lambda c: edit_line(c.train_csv, 2, set_field(1, "inf")),
        "landmarks.csv",
        "line 2, column 'Point_M0_X': not a number: 'inf'",
    ),
    (
        "empty file name",
        lambda c: edit_line(c.train_csv, 3, set_field(0, "")),
        "landmarks.csv",
        "line 3, column 'file_name': empty file name",
    ),
    (
        "duplicate training file name",
        lambda c: edit_line(c.train_csv, 4, set_field(0, "00000.jpg")),
        "landmarks.csv",
        "line 4: duplicate file_name '00000.jpg' (first on line 2)",
    ),
    (
        "duplicate test file name",
        lambda c: edit_line(c.test_csv, 4, set_field(0, c.test_names[0])),
        "test_points.csv",
        "line 4: duplicate file_name '00006.jpg' (first on line 2)",
    ),
    (
        "missing training image",
        lambda c: c.train_image(2).unlink(),
        "train/images/00002.jpg",
        "image file not found",
    ),
    (
        "garbage image file",
        lambda c: c.train_image(1).write_bytes(b"this is not an image" * 10),
        "train/images/00001.jpg",
        "cannot decode image",
    ),
    (
        "truncated JPEG",
        lambda c: c.test_image(1).write_bytes(c.test_image(1).read_bytes()[:400]),
        "test/images/00007.jpg",
        "truncated JPEG",
    ),
    (
        "header declaring a 60000x60000 image (a 68-byte PNG)",
        lambda c: c.train_image(1).write_bytes(hostile_png(60000, 60000)),
        "train/images/00001.jpg",
        "image declares 60000x60000 pixels (3600.0 megapixels), over the limit of 50 megapixels",
    ),
    (
        "corrupt JPEG data behind an intact end marker",
        lambda c: c.test_image(2).write_bytes(corrupt_jpeg()),
        "test/images/00008.jpg",
        "corrupt image data (decoder: Corrupt JPEG data: premature end of data segment)",
    ),
    (
        "point index listed twice",
        lambda c: edit_line(c.test_csv, 3, set_field(1, "[1, 2, 1, 3]")),
        "test_points.csv",
        "line 3, column 'point_index_list': point index 1 listed twice",
    ),
    (
        "malformed index list",
        lambda c: edit_line(c.test_csv, 3, set_field(1, "[1, 2, 3")),
        "test_points.csv",
        "line 3, column 'point_index_list': not a list of integers: '[1, 2, 3'",
    ),
    (
        "index list without brackets",
        lambda c: edit_line(c.test_csv, 2, set_field(1, "1, 2, 3, 4")),
        "test_points.csv",
        "line 2, column 'point_index_list': not a list of integers",
    ),
    (
        "negative index",
        lambda c: edit_line(c.test_csv, 2, set_field(1, "[1, -2, 3, 4]")),
        "test_points.csv",
        "line 2, column 'point_index_list': point index -2 out of range [0, 12)",
    ),
    (
        "index lists of different lengths",
        lambda c: edit_line(c.test_csv, 4, set_field(1, "[1, 2, 3]")),
        "test_points.csv",
        "line 4, column 'point_index_list': 3 indices, expected 4 as on line 2",
    ),
    (
        "test_points header",
        lambda c: edit_line(c.test_csv, 1, set_field(1, "points")),
        "test_points.csv",
        "line 1: header must be 'file_name<TAB>point_index_list'",
    ),
    (
        "test_points extra column",
        lambda c: edit_line(c.test_csv, 3, lambda f: [*f, "x"]),
        "test_points.csv",
        "line 3 has 3 columns, expected 2",
    ),
    (
        "test image also in train",
        lambda c: edit_line(c.test_csv, 2, set_field(0, "00001.jpg")),
        "test_points.csv",
        "file_name '00001.jpg' is also in",
    ),
    (
        "missing landmarks.csv",
        lambda c: c.train_csv.unlink(),
        "train/landmarks.csv",
        "missing (expected the competition layout)",
    ),
]


@pytest.mark.parametrize("corrupt, where, message", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_check_rejects_malformed_input(make_competition, corrupt, where, message):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    corrupt(comp)
    result = kit("check", comp.root, "--decode")
    assert result.exit_code == 1
    line = error_line(result)
    assert where in line and message in line, line
    assert "Traceback" not in result.output and "ok" not in result.stdout


def test_check_rejects_index_971_out_of_range(make_competition):
    comp = make_competition(n_train=3, n_test=2, n_points=971, n_requested=30)
    edit_line(comp.test_csv, 3, set_field(1, str([5] * 29 + [971])))
    result = kit("check", comp.root)
    assert result.exit_code == 1
    line = error_line(result)
    assert "test_points.csv: line 3, column 'point_index_list': point index 971 out of range [0, 971)" in line


def test_error_message_with_brackets_is_printed_verbatim(make_competition):
    comp = make_competition()
    edit_line(comp.test_csv, 2, set_field(1, "[red]"))
    line = error_line(kit("check", comp.root))
    assert "not a list of integers: '[red]'" in line


def test_folds_stable_for_a_seed(make_competition):
    comp = make_competition(n_train=20, n_test=2)
    result = kit("folds", comp.root, "--k", 5, "--seed", 3)
    assert result.exit_code == 0, result.stderr
    first = pd.read_csv(comp.root / "folds.csv")
    assert list(first.columns) == ["file_name", "fold"]
    assert first["file_name"].tolist() == comp.train_names
    assert sorted(first["fold"].value_counts().tolist()) == [4] * 5
    assert kit("folds", comp.root, "--k", 5, "--seed", 3).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(comp.root / "folds.csv"), first)
    assert kit("folds", comp.root, "--k", 5, "--seed", 4).exit_code == 0
    assert not pd.read_csv(comp.root / "folds.csv")["fold"].equals(first["fold"])


def test_folds_respect_groups_file(make_competition):
    comp = make_competition(n_train=24, n_test=2)
    groups = {name: f"person{i // 4}" for i, name in enumerate(comp.train_names)}  # 6 people, 4 photos each
    (comp.root / "train" / "groups.csv").write_text(
        "file_name,group\n" + "".join(f"{n},{g}\n" for n, g in groups.items())
    )
    result = kit("folds", comp.root, "--k", 3, "--seed", 0)
    assert result.exit_code == 0, result.stderr
    assert "(grouped)" in result.stdout
    folds = pd.read_csv(comp.root / "folds.csv")
    per_group = folds.assign(group=folds["file_name"].map(groups)).groupby("group")["fold"].nunique()
    assert (per_group == 1).all()
    assert folds["fold"].nunique() == 3


def test_folds_missing_explicit_groups_file_is_an_error(make_competition, tmp_path):
    comp = make_competition(n_train=10)
    result = kit("folds", comp.root, "--groups", tmp_path / "nope.csv")
    assert result.exit_code == 1
    assert "nope.csv: file not found" in error_line(result)


def test_score_perfect_submission_is_zero(make_competition, tmp_path):
    comp = make_competition()
    test = read_test_points(comp.test_csv, comp.train_points.shape[1])
    write_submission(tmp_path / "perfect.csv", comp.test_points.astype(np.float64), test)
    result = kit("score", tmp_path / "perfect.csv", "--data", comp.root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "MSE 0  NME 0.00%  >10%: 0.0%"

    write_submission(tmp_path / "off.csv", comp.test_points + np.array([1.0, 0.0]), test)
    result = kit("score", tmp_path / "off.csv", "--data", comp.root)
    assert result.stdout.split()[:2] == ["MSE", "0.5"]  # x off by 1 px, y exact: what `awk '{print $2}'` reads


def test_score_prints_the_nme_of_the_requested_points_over_the_full_face(make_competition, tmp_path):
    comp = make_competition(n_test=4, n_points=12, n_requested=4)
    test = read_test_points(comp.test_csv, comp.train_points.shape[1])
    shift = np.zeros(comp.test_points.shape)
    shift[0] = [3.0, 4.0]  # face 0: every point 5 px off; the other faces exact
    write_submission(tmp_path / "off.csv", comp.test_points + shift, test)
    full = comp.test_points.astype(np.float64)
    # face box of all 12 true points, not of the 4 submitted ones
    box = np.sqrt(np.prod(full[0].max(axis=0) - full[0].min(axis=0)))
    result = kit("score", tmp_path / "off.csv", "--data", comp.root)
    assert result.exit_code == 0, result.stderr
    mse, nme, failures = result.stdout.split()[1], result.stdout.split()[3], result.stdout.split()[5]
    assert float(mse) == pytest.approx(25 / 2 / 4)
    assert nme == f"{500 / box / 4:.2f}%" and failures == f"{100 / 4 * (500 / box > 10):.1f}%"

    eyes = np.hypot(*(full[0, 2] - full[0, 7]))
    (comp.root / "nme_points.txt").write_text("2 7\n")  # the data names the face size's points
    assert kit("score", tmp_path / "off.csv", "--data", comp.root).stdout.split()[3] == f"{500 / eyes / 4:.2f}%"
    eyes = np.hypot(*(full[0, 0] - full[0, 1]))
    result = kit("score", tmp_path / "off.csv", "--data", comp.root, "--nme-points", "0,1")  # the option wins
    assert result.stdout.split()[3] == f"{500 / eyes / 4:.2f}%"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("36", "--nme-points '36': expected two point numbers A,B such as 36,45"),
        ("a,b", "--nme-points 'a,b': expected two point numbers"),
        ("1,2,3", "--nme-points '1,2,3': expected two point numbers"),
        ("-1,2", "--nme-points '-1,2': expected two point numbers"),
        ("4,4", "--nme-points '4,4': the two points must differ"),
        ("0,12", "--nme-points: point 12 out of range (the faces have 12 points, numbered 0..11)"),
    ],
)
def test_score_refuses_bad_nme_points(make_competition, tmp_path, value, message):
    comp = make_competition(n_points=12)
    test = read_test_points(comp.test_csv, comp.train_points.shape[1])
    write_submission(tmp_path / "sub.csv", comp.test_points.astype(np.float64), test)
    result = kit("score", tmp_path / "sub.csv", "--data", comp.root, "--nme-points", value)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: {message}")


def test_score_rejects_a_malformed_submission(make_competition, tmp_path):
    comp = make_competition()
    test = read_test_points(comp.test_csv, comp.train_points.shape[1])
    path = write_submission(tmp_path / "sub.csv", comp.test_points.astype(np.float64), test)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",", ",abc,", 1).rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    result = kit("score", path, "--data", comp.root)
    assert result.exit_code == 1
    assert "sub.csv: line 3" in error_line(result)


def watch_decoding(monkeypatch) -> list[bytes]:
    """Record the first bytes of every buffer OpenCV decodes from now on."""
    seen = []
    real = cv2.imdecode

    def imdecode(buffer, flags):
        seen.append(bytes(buffer[:8]))
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    return seen


@pytest.mark.parametrize("decode", ["--decode", "--no-decode"])
def test_check_refuses_huge_images_from_their_header(make_competition, monkeypatch, decode):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    comp.train_image(3).write_bytes(bomb_png(20000))  # a real, valid 400-megapixel PNG of about 400 kB
    decoded = watch_decoding(monkeypatch)
    result = kit("check", comp.root, decode)
    assert result.exit_code == 1
    line = error_line(result)
    assert f"{comp.train_image(3)}: image declares 20000x20000 pixels (400.0 megapixels)" in line, line
    assert "Traceback" not in result.output
    assert not any(head.startswith(b"\x89PNG") for head in decoded)  # the big one never reached the decoder
    assert len(decoded) == (3 if decode == "--decode" else 0)


def test_check_reads_headers_by_default_and_says_so(make_competition, monkeypatch):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    comp.test_image(2).write_bytes(corrupt_jpeg())  # only a decode finds it
    decoded = watch_decoding(monkeypatch)
    result = kit("check", comp.root)
    assert result.exit_code == 0, result.stderr
    assert decoded == []
    assert "images       9 headers read; pass --decode to decode every image" in result.stdout
    result = kit("check", comp.root, "--decode")
    assert result.exit_code == 1 and "corrupt image data" in error_line(result)
    comp.test_image(2).write_bytes(comp.train_image(0).read_bytes())
    result = kit("check", comp.root, "--decode")
    assert result.exit_code == 0, result.stderr
    assert "images       all 9 decoded" in result.stdout and len(decoded) == 9 * 2


def test_pixel_limit_from_option_and_environment(make_competition, monkeypatch):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)  # 40x48 images: 1920 pixels
    assert kit("check", comp.root, "--max-pixels", 1920).exit_code == 0
    result = kit("check", comp.root, "--max-pixels", 1919)
    assert result.exit_code == 1
    assert f"{comp.train_image(0)}: image declares 48x40 pixels" in error_line(result)
    monkeypatch.setenv("KIT_MAX_IMAGE_PIXELS", "1000")
    for args in (["check", comp.root], ["check", comp.root, "--no-decode"], ["prepare", comp.root]):
        result = kit(*args)
        assert result.exit_code == 1, args
        assert f"{comp.train_image(0)}: image declares 48x40 pixels" in error_line(result)
    assert kit("check", comp.root, "--max-pixels", 2000).exit_code == 0  # the option wins
    monkeypatch.setenv("KIT_MAX_IMAGE_PIXELS", "lots")
    for args in (["check", comp.root], ["prepare", comp.root]):
        result = kit(*args)
        assert result.exit_code == 1
        assert "KIT_MAX_IMAGE_PIXELS='lots': expected a positive whole number of pixels" in error_line(result)


def test_prepare_names_a_hostile_image(make_competition):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    comp.train_image(2).write_bytes(hostile_png(60000, 60000))
    result = kit("prepare", comp.root, "--size", 16, "--pad", 2)
    assert result.exit_code == 1
    line = error_line(result)
    assert f"{comp.train_image(2)}: image declares 60000x60000 pixels (3600.0 megapixels)" in line, line
    assert "Traceback" not in result.output
    result = kit("prepare", comp.root, "--size", 16, "--pad", 2, "--max-pixels", 1000)
    assert f"{comp.train_image(0)}: image declares 48x40 pixels" in error_line(result)


@pytest.mark.slow  # builds big models or spawns processes
def test_check_decodes_in_worker_processes_for_many_images(make_competition, monkeypatch):
    monkeypatch.setattr(check_module, "_POOL_MIN_IMAGES", 2)
    monkeypatch.setattr(check_module, "_POOL_CHUNK", 2)
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)
    result = kit("check", comp.root, "--decode")
    assert result.exit_code == 0, result.stderr
    assert "40x48 to 40x48 (HxW)" in result.stdout
    comp.train_image(4).write_bytes(corrupt_jpeg(seed=1))
    result = kit("check", comp.root, "--decode")
    assert result.exit_code == 1
    assert f"{comp.train_image(4)}: corrupt image data (decoder: Corrupt JPEG data" in error_line(result)


def test_check_counts_and_names_points_outside(make_competition):
    comp = make_competition(n_train=6, n_test=3, n_points=12, n_requested=4)  # points inside 40x48 images
    result = kit("check", comp.root)
    assert "outside      none of the 72 training points is outside its image" in result.stdout
    edit_line(comp.train_csv, 3, lambda f: [f[0], "-5000", *f[2:5], "-5000", *f[6:9], "-4990", *f[10:]])
    edit_line(comp.train_csv, 6, set_field(2, "100"))  # y of point 0: 61 px below the last row
    edit_line(comp.train_csv, 7, set_field(3, "48"))  # x of point 1: just past the last column
    result = kit("check", comp.root)
    assert result.exit_code == 0, result.stderr
    assert (
        "outside      5 of 72 training points (6.94%) in 3 of 6 rows are outside their image; worst rows: "
        "00001.jpg (3 points, up to 5000 px out), 00004.jpg (1 point, up to 61 px out), "
        "00005.jpg (1 point, up to 1 px out)"
    ) in result.stdout


def test_check_on_synth_with_two_wild_rows(tmp_path):
    from kit.synth import generate_competition

    root = tmp_path / "synth"
    generate_competition(root, n_train=60, n_test=5, seed=4)
    wild = {3: range(0, 40, 2), 41: range(500, 520)}  # row -> the 20 points whose x becomes -5000
    path = root / "train" / "landmarks.csv"
    for row, points in wild.items():
        for point in points:
            edit_line(path, row + 2, set_field(1 + 2 * point, "-5000"))
    result = kit("check", root)
    assert result.exit_code == 0, result.stderr
    assert "matches private/flip_permutation.txt" in result.stdout, result.stdout
    truth = load_permutation(root / "private" / "flip_permutation.txt", 971)
    np.testing.assert_array_equal(load_permutation(root / "flip_permutation.txt", 971), truth)
    names = pd.read_csv(path, sep="\t", usecols=["file_name"])["file_name"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("outside"))
    worst = line.split("worst rows: ")[1]
    assert worst.startswith(f"{names[3]} (20 points, up to ") or worst.startswith(f"{names[41]} (20 points, up to ")
    assert f"{names[3]} (20 points" in worst and f"{names[41]} (20 points" in worst


def test_points_outside_read_in_row_chunks_of_a_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 60, (11, 7, 2)).astype(np.float32)
    sizes = rng.integers(30, 50, (11, 2))
    np.save(tmp_path / "points.npy", points)
    mapped = np.load(tmp_path / "points.npy", mmap_mode="r")
    x, y = points[..., 0].astype(np.float64), points[..., 1].astype(np.float64)
    h, w = sizes[:, :1], sizes[:, 1:]
    distance = np.maximum.reduce([-x, x - (w - 1), -y, y - (h - 1)])
    for chunk in (None, 1, 4):
        counts, farthest = check_module._points_outside(mapped, sizes, chunk)
        np.testing.assert_array_equal(counts, (distance > 0).sum(axis=1))
        np.testing.assert_allclose(farthest, distance.max(axis=1, initial=0.0), rtol=1e-6)
    assert 0 < counts.sum() < points[..., 0].size
