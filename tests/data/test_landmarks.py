"""Reading landmarks.csv and test_points.csv: exact values, pandas' silent quirks caught, the .npy cache."""

from __future__ import annotations

import numpy as np
import pytest

import kit.data.landmarks as landmarks_module
from kit.data.landmarks import read_landmarks, read_test_points
from kit.errors import DataError


def write_table(path, names, values, n_points, row_end="\n"):
    header = "\t".join(["file_name"] + [f"Point_M{i}_{a}" for i in range(n_points) for a in "XY"])
    rows = ["\t".join([n, *map(str, v)]) + row_end for n, v in zip(names, values, strict=True)]
    path.write_text(header + "\n" + "".join(rows))
    return path


def test_reads_values_exactly_with_points_from_header(tmp_path):
    values = np.arange(3 * 14).reshape(3, 14) - 5  # 7 points, negative coordinates allowed
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg", "b.jpg", "c.jpg"], values.tolist(), 7)
    result = read_landmarks(path)
    assert result.n_points == 7 and len(result) == 3
    assert result.points.dtype == np.float32 and result.points.shape == (3, 7, 2)
    np.testing.assert_array_equal(result.points, values.reshape(3, 7, 2))
    assert result.file_names.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert not result.points.flags.writeable


def test_reads_decimal_coordinates(tmp_path):
    path = write_table(tmp_path / "l.csv", ["a.jpg"], [["1.5", "-2.25", "3e1", "4"]], 2)
    np.testing.assert_array_equal(read_landmarks(path, use_cache=False).points, [[[1.5, -2.25], [30, 4]]])


def test_trailing_tab_does_not_shift_columns(tmp_path):
    # pandas without index_col=False turns the first column into the index when rows end in a TAB.
    path = write_table(tmp_path / "l.csv", ["a.jpg", "b.jpg"], [[1, 2, 3, 4], [5, 6, 7, 8]], 2, row_end="\t\n")
    result = read_landmarks(path)
    assert result.file_names.tolist() == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(result.points.reshape(2, 4), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_short_row_is_an_error_not_nan(tmp_path):
    path = write_table(tmp_path / "l.csv", ["a.jpg", "b.jpg"], [[1, 2, 3, 4], [5, 6, 7]], 2)
    with pytest.raises(DataError, match=r"l\.csv: line 3 has 4 columns, expected 5"):
        read_landmarks(path)


def test_extra_field_on_first_row_is_an_error(tmp_path):
    # pandas with index_col=False drops it with only a warning.
    path = write_table(tmp_path / "l.csv", ["a.jpg", "b.jpg"], [[1, 2, 3, 4, 9], [5, 6, 7, 8]], 2)
    with pytest.raises(DataError, match=r"line 2 has 6 columns, expected 5"):
        read_landmarks(path)


@pytest.mark.parametrize("name", ["NA", "nan", "null", "None"])
def test_na_like_file_names_are_kept(tmp_path, name):
    path = write_table(tmp_path / "l.csv", [name, "b.jpg"], [[1, 2], [3, 4]], 1)
    assert read_landmarks(path).file_names.tolist() == [name, "b.jpg"]


@pytest.mark.parametrize("value", ["nan", "NA", "inf", "1_000", "0x10", "--1", "1e400", "\u0661"])
def test_non_numbers_are_rejected(tmp_path, value):
    path = write_table(tmp_path / "l.csv", ["a.jpg", "b.jpg"], [[1, 2], [3, value]], 1)
    with pytest.raises(DataError, match=r"l\.csv: line 3, column 'Point_M0_Y': (not a number|out of range)"):
        read_landmarks(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "file is empty"),
        ("file_name\tPoint_M0_X\tPoint_M0_Y\n", "no data rows"),
        ("file_name\tPoint_M0_X\n", "line 1: header has 2 columns, expected 1 \\+ 2 x points"),
    ],
)
def test_empty_or_header_only(tmp_path, text, message):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_landmarks(tmp_path / "l.csv")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_landmarks(tmp_path / "nope.csv")


def test_cache_reload_is_memory_mapped_and_skips_parsing(tmp_path, monkeypatch):
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg", "b.jpg"], [[1, 2, 3, 4], [5, 6, 7, 8]], 2)
    first = read_landmarks(path)
    assert len(list((tmp_path / ".kit_cache").glob("landmarks-*.npy"))) == 2

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(landmarks_module, "_pieces", no_parse)
    second = read_landmarks(path)
    assert isinstance(second.points, np.memmap)
    np.testing.assert_array_equal(second.points, first.points)
    np.testing.assert_array_equal(second.file_names, first.file_names)


def test_modified_file_invalidates_the_cache(tmp_path):
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg", "b.jpg"], [[1, 2, 3, 4], [5, 6, 7, 8]], 2)
    read_landmarks(path)
    # Same size, rewritten at once: the modification time may not even change.
    write_table(path, ["a.jpg", "b.jpg"], [[1, 2, 3, 4], [5, 6, 7, 9]], 2)
    assert read_landmarks(path).points[1, 1, 1] == 9
    assert len(list((tmp_path / ".kit_cache").glob("*.npy"))) == 2  # the stale version is gone


def test_corrupt_cache_is_rebuilt(tmp_path):
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg"], [[1, 2]], 1)
    read_landmarks(path)
    for cached in (tmp_path / ".kit_cache").glob("*.points.npy"):
        cached.write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(read_landmarks(path).points, [[[1, 2]]])


def test_unwritable_cache_dir_only_loses_the_cache(tmp_path):
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg"], [[1, 2]], 1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = read_landmarks(path, cache_dir=blocker / "cache")
    np.testing.assert_array_equal(result.points, [[[1, 2]]])
    assert not result.points.flags.writeable


def test_explicit_cache_dir_and_no_cache(tmp_path):
    path = write_table(tmp_path / "landmarks.csv", ["a.jpg"], [[1, 2]], 1)
    read_landmarks(path, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2
    assert not isinstance(read_landmarks(path, use_cache=False).points, np.memmap)
    assert not (tmp_path / ".kit_cache").exists()


def test_cache_survives_a_large_parse(tmp_path):
    # More rows than one transpose block, so the blocked copy and its tail are exercised.
    rng = np.random.default_rng(0)
    values = rng.integers(-50, 500, (2500, 6))
    path = write_table(tmp_path / "l.csv", [f"{i}.jpg" for i in range(2500)], values.tolist(), 3)
    np.testing.assert_array_equal(read_landmarks(path).points, values.reshape(-1, 3, 2))
    np.testing.assert_array_equal(read_landmarks(path).points, values.reshape(-1, 3, 2))


def write_points(path, rows):
    path.write_text("file_name\tpoint_index_list\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_read_test_points(tmp_path):
    path = write_points(tmp_path / "t.csv", ["a.jpg\t[0, 5, 9]", "b.jpg\t[3,2,1]\t", "", "c.jpg\t[ 7 , 8,0 ]"])
    result = read_test_points(path, n_points=10)
    assert result.file_names.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_array_equal(result.indices, [[0, 5, 9], [3, 2, 1], [7, 8, 0]])
    assert result.indices.dtype == np.int64


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a.jpg\t[0, 10]"], "line 2, column 'point_index_list': point index 10 out of range \\[0, 10\\)"),
        (["a.jpg\t[1]", "b.jpg\t[99999999999999999999999]"], "line 3.*out of range"),
        (["a.jpg\t[1, 2]", "b.jpg\t(1, 2)"], "line 3, column 'point_index_list': not a list of integers"),
        (["a.jpg\t[1, 2,]"], "not a list of integers"),
        (["a.jpg\t[1.5, 2]"], "not a list of integers"),
        (["a.jpg\t[]"], "line 2, column 'point_index_list': empty list"),
        (["a.jpg\t[1, 2, 3]", "b.jpg\t[4, 2, 4]"], "line 3, column 'point_index_list': point index 4 listed twice"),
        (["a.jpg\t[1, 2, 3]", "", "b.jpg\t[7, 7, 7]"], "line 4, column 'point_index_list': point index 7 listed twice"),
        (["a.jpg"], "line 2 has 1 columns, expected 2"),
        ([], "no data rows"),
    ],
)
def test_read_test_points_errors(tmp_path, rows, message):
    path = write_points(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=message):
        read_test_points(path, n_points=10)


def test_parsed_in_pieces_with_global_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(landmarks_module, "_PIECE_BYTES", 300)  # ~20 lines a piece
    rng = np.random.default_rng(1)
    values = rng.integers(0, 999, (400, 4))
    path = write_table(tmp_path / "l.csv", [f"{i}.jpg" for i in range(400)], values.tolist(), 2)
    np.testing.assert_array_equal(read_landmarks(path, use_cache=False).points, values.reshape(-1, 2, 2))
    np.testing.assert_array_equal(read_landmarks(path).points, values.reshape(-1, 2, 2))
    lines = path.read_text().splitlines()
    lines[350] += "\t5"
    lines.insert(100, "")  # a blank line is skipped, and still counted in line numbers
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"l\.csv: line 352 has 6 columns, expected 5"):
        read_landmarks(path)
