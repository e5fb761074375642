"""``nme_points.txt``: which two points of a face give its size for NME, read and written by the competition."""

from __future__ import annotations

import pytest

from kit.data.competition import NME_POINTS_FILE, Competition, check_nme_points, read_nme_points, write_nme_points
from kit.errors import DataError


def test_without_the_file_nme_uses_the_face_box(make_competition):
    comp = make_competition(n_points=12)
    assert Competition.load(comp.root).nme_points is None
    assert Competition.load(comp.root).resolve_nme_points((3, 5)) == (3, 5)


@pytest.mark.parametrize("text", ["36 45\n", "  36\t45  ", "36\n45\n"])
def test_the_file_names_two_points(make_competition, text):
    comp = make_competition(n_points=68)
    (comp.root / NME_POINTS_FILE).write_text(text)
    loaded = Competition.load(comp.root)
    assert loaded.nme_points == (36, 45)
    assert loaded.resolve_nme_points(None) == (36, 45)
    assert loaded.resolve_nme_points((0, 1)) == (0, 1)  # an option overrides the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"expected two point numbers, got \[\]"),
        ("36\n", r"expected two point numbers, got \[36\]"),
        ("36 45 46\n", r"expected two point numbers, got \[36, 45, 46\]"),
        ("36,45\n", "expected two point numbers such as '36 45', got '36,45'"),
        ("left right\n", "expected two point numbers such as '36 45', got 'left right'"),
        ("7 7\n", r"the two points must differ \(got 7 twice\)"),
        ("3 12\n", r"point 12 out of range \(the faces have 12 points, numbered 0..11\)"),
        ("-1 3\n", "point -1 out of range"),
    ],
)
def test_a_bad_file_is_an_error_naming_it(make_competition, text, message):
    comp = make_competition(n_points=12)
    path = comp.root / NME_POINTS_FILE
    path.write_text(text)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        Competition.load(comp.root).nme_points  # noqa: B018
    with pytest.raises(DataError, match=f"^{path}: "):  # the default of every command
        Competition.load(comp.root).resolve_nme_points(None)
    assert Competition.load(comp.root).resolve_nme_points((0, 1)) == (0, 1)  # an option doesn't read it


def test_an_undecodable_file_is_an_error_naming_it(make_competition):
    comp = make_competition()
    (comp.root / NME_POINTS_FILE).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match=f"^{comp.root / NME_POINTS_FILE}: unreadable"):
        Competition.load(comp.root).nme_points  # noqa: B018


def test_write_then_read(make_competition, tmp_path):
    comp = make_competition(n_points=12)
    path = write_nme_points(comp.root, (9, 2), n_points=12)
    assert path == comp.root / NME_POINTS_FILE and path.read_text() == "9 2\n"
    assert Competition.load(comp.root).nme_points == (9, 2)
    assert read_nme_points(path) == (9, 2)
    assert not list(comp.root.glob(".*tmp*"))  # written atomically: no temporary file left
    with pytest.raises(DataError, match=r"nme_points.txt: point 12 out of range"):
        write_nme_points(comp.root, (0, 12), n_points=12)
    with pytest.raises(DataError, match="the two points must differ"):
        write_nme_points(tmp_path, (4, 4))
    with pytest.raises(DataError, match=r"point -2 out of range \(numbers from 0\)"):
        write_nme_points(tmp_path, (-2, 4))
    assert path.read_text() == "9 2\n"  # a refused write leaves the file as it was


def test_check_nme_points():
    assert check_nme_points((36, 45), 68, "x") == (36, 45)
    assert check_nme_points([0, 1], None, "x") == (0, 1)
    with pytest.raises(DataError, match=r"^--nme-points: point 68 out of range \(the faces have 68 points"):
        check_nme_points((36, 68), 68, "--nme-points")
    with pytest.raises(DataError, match="expected two point numbers"):
        check_nme_points((1.5, 2), 68, "x")
