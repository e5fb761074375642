"""The shared k-fold split: stable for a seed, independent of row order, groups kept together, validated on load."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from kit.data.folds import load_folds, make_folds, read_groups, write_folds
from kit.errors import DataError

NAMES = np.array([f"{i:04d}.jpg" for i in range(50)])


def test_same_seed_same_split_and_balanced():
    a, b = make_folds(NAMES, k=5, seed=3), make_folds(NAMES, k=5, seed=3)
    assert a.equals(b)
    assert a["file_name"].tolist() == NAMES.tolist()
    assert sorted(a["fold"].value_counts().tolist()) == [10] * 5
    assert not a["fold"].equals(make_folds(NAMES, k=5, seed=4)["fold"])


def test_split_does_not_depend_on_row_order():
    order = np.random.default_rng(0).permutation(len(NAMES))
    plain = make_folds(NAMES, k=5, seed=1).set_index("file_name")["fold"]
    shuffled = make_folds(NAMES[order], k=5, seed=1).set_index("file_name")["fold"]
    assert shuffled.loc[plain.index].equals(plain)


def test_groups_share_a_fold():
    groups = np.array([f"g{i % 13}" for i in range(len(NAMES))])
    folds = make_folds(NAMES, k=4, seed=0, groups=groups)
    for group in np.unique(groups):
        assert folds["fold"][groups == group].nunique() == 1
    assert folds["fold"].nunique() == 4


def test_too_few_images_or_groups():
    with pytest.raises(DataError, match="cannot split 3 images into 5 folds"):
        make_folds(NAMES[:3], k=5)
    with pytest.raises(DataError, match="cannot split 2 groups into 3 folds"):
        make_folds(NAMES, k=3, groups=np.array(["a", "b"] * 25))


def test_write_and_load(tmp_path):
    folds = make_folds(NAMES, k=5, seed=0)
    digest = write_folds(tmp_path / "folds.csv", folds)
    assert digest == hashlib.sha256((tmp_path / "folds.csv").read_bytes()).hexdigest()
    np.testing.assert_array_equal(load_folds(tmp_path / "folds.csv", NAMES), folds["fold"].to_numpy())


def test_digest_identifies_the_split(tmp_path):
    digest = write_folds(tmp_path / "a.csv", make_folds(NAMES, k=5, seed=0))
    assert write_folds(tmp_path / "b.csv", make_folds(NAMES, k=5, seed=0)) == digest  # same split, same digest
    assert write_folds(tmp_path / "a.csv", make_folds(NAMES, k=5, seed=0)) == digest  # rewritten in place
    other = write_folds(tmp_path / "c.csv", make_folds(NAMES, k=5, seed=1))
    assert other != digest and other == hashlib.sha256((tmp_path / "c.csv").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: lines[:-1], "rows do not match"),
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "rows do not match"),
        (lambda lines: [lines[0].replace("fold", "k"), *lines[1:]], "header must be 'file_name,fold'"),
        (lambda lines: [*lines[:3], lines[3].split(",")[0] + ",x", *lines[4:]], "line 4, column 'fold'"),
        (lambda lines: [lines[0], *(line.replace(",4", ",7") for line in lines[1:])], "numbered 0..k-1"),
    ],
)
def test_load_rejects_bad_files(tmp_path, edit, message):
    write_folds(tmp_path / "folds.csv", make_folds(NAMES, k=5, seed=0))
    lines = (tmp_path / "folds.csv").read_text().splitlines()
    (tmp_path / "folds.csv").write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(DataError, match=message):
        load_folds(tmp_path / "folds.csv", NAMES)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="run 'kit folds'"):
        load_folds(tmp_path / "folds.csv", NAMES)


@pytest.mark.parametrize("sep", [",", "\t"])
def test_read_groups(tmp_path, sep):
    path = tmp_path / "groups.csv"
    rows = "".join(f"{n}{sep}{'NA' if i % 2 else 'b'}\n" for i, n in enumerate(NAMES))
    path.write_text(f"file_name{sep}group\n{rows}")
    groups = read_groups(path, NAMES[::-1])
    assert groups.tolist() == ["NA" if i % 2 else "b" for i in range(len(NAMES))][::-1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,group\na,1\n", "header must be 'file_name,group'"),
        ("file_name,group\na,1\nb,\n", "line 3: empty group"),
        ("file_name,group\na,1\nb,2\na,3\n", "line 4: 'a' is given two groups"),
        ("file_name,group\na,1\n", "no group for 'b'"),
    ],
)
def test_read_groups_errors(tmp_path, text, message):
    (tmp_path / "groups.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_groups(tmp_path / "groups.csv", np.array(["a", "b"]))
