"""Fault catalogue, issue 21 (ids c21-NN): stale labels, replaced images and thread counts never pass silently;
infer never overwrites; no hang, no traceback. One small test per case, through the real code on tiny data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build_competition
from typer.testing import CliRunner

from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.cli import app
from kit.config import PseudoConfig, load_pipeline
from kit.data import landmarks as landmarks_module
from kit.data import prepare as prepare_module
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.data.landmarks import points_digest, read_landmarks
from kit.data.prepare import crop_cache_path, images_sha256, prepare_crops
from kit.ensemble.blend import blend_runs
from kit.errors import DataError, KitError
from kit.predict.infer import list_images
from kit.runs import FoldSummary, Identity, Numerics, RunDir, SplitInfo, check_identity
from kit.train.pseudo import load_pseudo_labels

runner = CliRunner()
K = 3
CPU1, CPU2 = Numerics(device="cpu", threads=1), Numerics(device="cpu", threads=2)


def _corrupt_jpeg(seed: int = 0) -> bytes:
    """A JPEG whose scan data is damaged mid-way, headers and end marker intact (the decoder repairs it, warning)."""
    import cv2

    rng = np.random.default_rng(seed)
    pixels = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
    data = bytearray(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    data[middle : middle + 64] = b"\xff\xd3" + rng.integers(0, 256, 62, dtype=np.uint8).tobytes()
    return bytes(data)


def _edit_one_label(csv: Path) -> None:
    lines = csv.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[1] = str(int(fields[1]) + 3)
    csv.write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")


def _same_size_same_mtime_rewrite(path: Path) -> None:
    """New pixels in ``path`` with its old size and mtime (what ``cp -p`` or ``rsync -t`` of another file does)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.fixture
def comp(tmp_path, monkeypatch):
    monkeypatch.delenv("KIT_WORKSPACE", raising=False)
    tiny = build_competition(tmp_path / "comp", n_train=9, n_test=3, n_points=6)
    write_folds(Competition.load(tiny.root).folds_csv, make_folds(tiny.train_names, k=K, seed=0))
    return tiny


TRAIN = ["train.epochs=1", "train.batch_size=4", "train.report_images=0"]


def _pipeline(tmp_path: Path, name: str = "run", extra=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {{backbone: test_resnet, pretrained: {{source: none}}}}\n")
    return load_pipeline(path, ["input.size=32", "input.pad=4", "train.num_workers=0", *extra])


def _fake_run(tmp_path: Path, root: Path, name: str = "run") -> RunDir:
    """A finished run of the competition at ``root`` through the run contract, without training."""
    comp = Competition.load(root)
    pipeline = _pipeline(tmp_path, name)
    split = SplitInfo.of(comp)
    identity = Identity.of(pipeline, split, images_sha256(comp), CPU1)
    truth = np.asarray(comp.train.points, np.float32)
    fold_of = np.asarray(make_folds(comp.train.file_names, k=K, seed=0)["fold"])
    run = RunDir.under(tmp_path / "runs", name)
    run.record(pipeline, split, None)
    for fold in range(K):
        rows = fold_of == fold
        summary = FoldSummary(
            fold=fold, mse=1.0, best_epoch=0, epochs=1, wall_seconds=1.0, images_per_second=1.0,
            identity=identity, n_train=6, n_valid=3,
        )  # fmt: skip
        run.write_fold(fold, summary, truth[rows] + 1.0, np.full((len(comp.test), comp.n_points, 2), 20.0))
    assert run.assemble(pipeline, split, truth, fold_of, identity=identity) is not None
    return run


# --- labels and images in the identity ------------------------------------------------------------------------


def test_c21_01_labels_fingerprint_is_cached_beside_the_parsed_landmarks(comp, monkeypatch):
    first = read_landmarks(comp.train_csv)
    assert first.digest == points_digest(first.points)
    assert list((comp.root / "train" / ".kit_cache").glob("*.points.sha256"))
    monkeypatch.setattr(landmarks_module, "points_digest", lambda points: pytest.fail("hashed the points again"))
    assert read_landmarks(comp.train_csv).digest == first.digest  # a reload reads the stored hash
    monkeypatch.undo()
    _edit_one_label(comp.train_csv)
    assert read_landmarks(comp.train_csv).digest != first.digest


def test_c21_02_a_fold_of_other_labels_images_or_split_is_refused_naming_what_changed():
    split = SplitInfo(folds_sha256="f", train_names_sha256="a", test_names_sha256="b", n_points=3, labels_sha256="l")
    ours = Identity(
        pipeline_sha256="p", split_sha256=split.digest(), kit_version="1", labels_sha256="l", images_sha256="i",
        numerics=CPU1,
    )  # fmt: skip
    for update, named in (
        ({"labels_sha256": "L"}, "labels than this run (x): landmarks.csv changed since it was trained"),
        ({"images_sha256": "I"}, "images than this run (x): an image was replaced since it was trained"),
        ({"split_sha256": "S"}, "split than this run (x): folds.csv or the rows changed"),
        ({"pipeline_sha256": "P"}, "pipeline than this run (x); delete that fold folder"),
        ({"labels_sha256": None}, "labels (not recorded by the older kit that trained it) than this run"),
    ):
        with pytest.raises(KitError, match=r"runs/x/fold0: finished with a different ") as info:
            check_identity(Path("runs/x/fold0"), ours.model_copy(update=update), ours, "x")
        assert named in str(info.value) and "\n" not in str(info.value)
    # an older split record without labels still hashes (and compares) as before
    old = split.model_copy(update={"labels_sha256": None})
    assert old.digest() == split.digest() and old.first_difference(split) is None


@pytest.mark.slow  # trains one fold for one epoch
def test_c21_03_fixing_one_label_never_reuses_the_stale_folds(comp, tmp_path):
    from kit.train import fold_train

    pipeline = _pipeline(tmp_path, extra=TRAIN)
    fold_train(pipeline, comp.root, out_dir=tmp_path / "runs", folds="0")
    _edit_one_label(comp.train_csv)
    with pytest.raises(KitError, match=r"fold0: finished with a different labels than this run \(run\): landmarks"):
        fold_train(pipeline, comp.root, out_dir=tmp_path / "runs", folds="0,1")
    assert not (tmp_path / "runs" / "run" / "fold1").exists()  # refused before any work


def test_c21_04_a_replaced_image_of_the_same_size_and_mtime_gets_a_new_crop_cache(comp, monkeypatch):
    monkeypatch.setattr(prepare_module, "_RACY_NS", 0)  # trust the fresh files' stats, as for files of yesterday
    competition = Competition.load(comp.root)
    old = prepare_crops(competition, "train", 24, 0.1, 4)
    identity = images_sha256(competition)
    old_crop = np.array(old.images()[2])
    with monkeypatch.context() as patched:  # unchanged files: their stored fingerprints are reused, none is read
        patched.setattr(prepare_module, "_content_digest", lambda *a: pytest.fail("read an unchanged image"))
        assert images_sha256(competition) == identity
    time.sleep(0.01)
    _same_size_same_mtime_rewrite(comp.train_image(2))
    assert crop_cache_path(competition, "train", 24, 0.1, 4) != old.path
    assert images_sha256(competition) != identity
    new = prepare_crops(competition, "train", 24, 0.1, 4, skip_corrupt=True)
    assert new.path != old.path and not np.array_equal(new.images()[2], old_crop)


def test_c21_05_the_crop_cache_decodes_strictly_or_lists_the_corrupt_images(comp, tmp_path):
    comp.train_image(4).write_bytes(_corrupt_jpeg())
    result = runner.invoke(app, ["prepare", str(comp.root), "--size", "24", "--pad", "2"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert f"{comp.train_names[4]}: corrupt image data (decoder: Corrupt JPEG data" in line
    assert line.endswith("or pass --skip-corrupt to train without it")
    assert not [p for p in (comp.root / ".kit_cache").glob("crops-*")]  # nothing half-written
    result = runner.invoke(app, ["prepare", str(comp.root), "--size", "24", "--pad", "2", "--skip-corrupt"])
    assert result.exit_code == 0, result.output
    assert f"train: 1 image(s) with corrupt data: {comp.train_names[4]}" in result.output
    cache = prepare_crops(Competition.load(comp.root), "train", 24, 0.0, 2, skip_corrupt=True)
    assert cache.corrupt == (4,)
    with pytest.raises(DataError, match=rf"{comp.train_names[4]}: corrupt image data \(1 image\(s\)"):
        prepare_crops(Competition.load(comp.root), "train", 24, 0.0, 2)  # the cache remembers, the flag decides


def test_c21_06_blend_stack_and_pseudo_refuse_a_run_of_other_labels(comp, tmp_path):
    run = _fake_run(tmp_path, comp.root)
    _edit_one_label(comp.train_csv)  # the labels were fixed after the run (or: another competition, same names)
    for command in ("blend", "stack"):
        result = runner.invoke(app, [command, str(run.path), "--data", str(comp.root), "--out-dir", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert f"{run.path}: trained on other labels than {comp.train_csv}" in result.output
    competition = Competition.load(comp.root)
    with pytest.raises(KitError, match="trained on other labels than .*retrain the source"):
        load_pseudo_labels(PseudoConfig(source=run.path), competition, SplitInfo.of(competition), K)
    with pytest.raises(KitError, match="trained on other labels"):
        blend_runs([run.path], comp.root, out_dir=tmp_path / "subs")


# --- thread count and determinism ------------------------------------------------------------------------------


def test_c21_07_a_fold_of_other_numerics_is_refused_with_the_remedy_or_accepted_mixed(tmp_path):
    ident = Identity(pipeline_sha256="p", split_sha256="s", kit_version="1", numerics=CPU1)
    with pytest.raises(KitError) as info:
        check_identity(tmp_path / "fold0", ident, ident.model_copy(update={"numerics": CPU2}), "run")
    message = str(info.value)
    assert "finished with cpu, 1 thread, this process runs cpu, 2 threads" in message
    assert "OMP_NUM_THREADS=1" in message and "--jobs" in message and "--allow-mixed" in message
    check_identity(tmp_path / "fold0", ident, ident.model_copy(update={"numerics": CPU2}), "run", allow_mixed=True)


def test_c21_08_resuming_a_checkpoint_of_other_numerics_is_refused_unless_allowed(comp, tmp_path):
    pipeline = _pipeline(tmp_path)
    competition = Competition.load(comp.root)
    split = SplitInfo.of(competition)
    ours = Identity.of(pipeline, split, images_sha256(competition), CPU2)
    run = RunDir.under(tmp_path / "runs", "run")
    run.fold_dir(0).mkdir(parents=True)
    save_checkpoint(run.checkpoint(0, "last"), {"identity": ours.model_copy(update={"numerics": CPU1}).model_dump()})
    with pytest.raises(KitError, match=r"fold0/last.pt: was saved with cpu, 1 thread, .*--allow-mixed"):
        with run.claim(pipeline, split, [0], identity=ours):
            pass
    with run.claim(pipeline, split, [0], identity=ours, allow_mixed=True):
        assert run.checkpoint(0, "last").is_file()  # kept, to resume (the fold records the mix)


@pytest.mark.slow  # trains two folds for one epoch
def test_c21_09_folds_of_two_thread_counts_need_allow_mixed_and_the_run_records_it(comp, tmp_path):
    from kit.train import fold_train

    pipeline = _pipeline(tmp_path, extra=TRAIN)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fold_train(pipeline, comp.root, out_dir=tmp_path / "runs", folds="0")
        torch.set_num_threads(2)
        with pytest.raises(KitError, match=r"fold0: finished with cpu, 1 thread, this process runs cpu, 2 threads"):
            fold_train(pipeline, comp.root, out_dir=tmp_path / "runs", folds="1,2")
        metrics = fold_train(pipeline, comp.root, out_dir=tmp_path / "runs", folds="1,2", allow_mixed=True)
    finally:
        torch.set_num_threads(threads)
    assert metrics is not None and metrics.mixed_numerics == (CPU1, CPU2)


# --- kit infer's output rule -----------------------------------------------------------------------------------


def test_c21_10_infer_never_writes_into_its_inputs_with_or_without_force(comp, tmp_path):
    run = _fake_run(tmp_path, comp.root)
    images = comp.root / "test" / "images"
    protected = [comp.train_csv, run.path / "oof.npy", comp.test_image(0)]
    before = {path: path.read_bytes() for path in protected}
    cases = [
        (["--out", str(comp.train_csv)], "inside the competition folder"),
        (["--out", str(run.path / "oof.npy")], "inside the run folder"),
        (["--out", str(comp.test_image(0))], "inside the --images folder"),
        (["--out", str(tmp_path / "x.csv"), "--overlays", str(images / "png")], "--overlays"),
    ]
    for options, named in cases:
        for force in ([], ["--force"]):
            result = runner.invoke(app, ["infer", str(run.path), "--images", str(images), *options, *force])
            assert result.exit_code == 1, result.output
            assert named in result.output and result.output.count("\n") == 1, result.output
    assert {path: path.read_bytes() for path in protected} == before
    assert not (images / "png").exists() and not (tmp_path / "x.csv").exists()
    result = runner.invoke(app, ["infer", str(run.path), "--images", str(images), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.output


def test_c21_11_infer_skips_and_counts_other_files_and_names_dangling_links(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "notes.txt").write_text("hi")
    (folder / "sub").mkdir()
    images, others = list_images(folder)
    assert [p.name for p in images] == ["a.jpg"] and [p.name for p in others] == ["notes.txt", "sub"]
    (folder / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(KitError, match=r"b.jpg: a dangling symbolic link"):
        list_images(folder)
    (folder / "b.jpg").unlink()
    (folder / "c.png").symlink_to(folder / "c.png")
    with pytest.raises(KitError, match=r"c.png: a symbolic link loop"):
        list_images(folder)


def test_c21_12_infer_has_the_max_pixels_its_error_names(comp, tmp_path):
    run = _fake_run(tmp_path, comp.root)
    images = comp.root / "test" / "images"
    out = tmp_path / "x.csv"
    result = runner.invoke(
        app, ["infer", str(run.path), "--images", str(images), "--out", str(out), "--max-pixels", "9"]
    )
    assert result.exit_code == 1
    assert "over the limit of 9e-06 megapixels" in result.output, result.output
    assert "$KIT_MAX_IMAGE_PIXELS, or --max-pixels of kit check, prepare or infer" in result.output
    assert not out.exists()


# --- no hangs, no tracebacks -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_file(tmp_path: Path) -> Path:
    pipelines = Path(__file__).resolve().parents[2] / "pipelines"
    path = tmp_path / "sweep.yaml"
    path.write_text(f"pipelines:\n  - pipeline: {pipelines / 'demo_regression.yaml'}\n")
    return path


@pytest.mark.slow  # waits out the connection timeout in a kit process
@pytest.mark.parametrize("listening", [False, True], ids=["nothing-there", "silent-listener"])
def test_c21_13_ray_address_without_a_cluster_ends_in_one_line_within_the_timeout(comp, tmp_path, listening):
    pytest.importorskip("ray")
    server = socket.socket()
    if listening:  # accepts connections and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
    else:
        port = _free_port()
    started = time.monotonic()
    try:
        result = runner.invoke(
            app,
            [
                "sweep", str(_sweep_file(tmp_path)), "--data", str(comp.root), "--out", str(tmp_path / "runs"),
                "--executor", "ray", "--address", f"127.0.0.1:{port}", "--connect-timeout", "3",
            ],
        )  # fmt: skip
    finally:
        server.close()
    assert time.monotonic() - started < 20
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"error: --address 127.0.0.1:{port}: ") and "\n" not in line, result.output
    assert ("within 3 s" in line) if listening else ("no Ray cluster there" in line)
    assert not (tmp_path / "runs").exists() and not list((comp.root / ".kit_cache").glob("crops-*"))


def test_c21_14_fold_train_out_on_a_file_is_one_line(comp, tmp_path):
    (tmp_path / "afile").write_text("")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nmodel: {backbone: test_resnet, pretrained: {source: none}}\ninput: {size: 32}\n")
    for out in ("afile", "afile/below"):
        result = runner.invoke(
            app, ["fold-train", str(pipeline), "--data", str(comp.root), "--out", str(tmp_path / out)]
        )
        assert result.exit_code == 1
        assert "afile is a file, not a folder; choose another --out" in result.output
        assert result.output.count("\n") == 1, result.output


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow  # a kit process in its own mount namespace
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs root and unshare --mount for a read-only mount")
def test_c21_15_fold_train_out_on_a_read_only_file_system_is_one_line(comp, tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nmodel: {backbone: test_resnet, pretrained: {source: none}}\ninput: {size: 32}\n")
    kit = f"{sys.executable} -m kit fold-train {pipeline} --data {comp.root} --out {target}/runs"
    script = f"mount -t tmpfs -o ro tmpfs {target} && {kit}"
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"error: --out {target}/runs: read-only file system ({target}); choose another --out"
    )


def test_c21_16_a_workspace_that_is_a_file_is_one_line(comp, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("KIT_WORKSPACE", str(tmp_path / "afile"))
    result = runner.invoke(app, ["prepare", str(comp.root), "--size", "24"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: KIT_WORKSPACE={tmp_path / 'afile'}: not a folder; point it at a folder for the derived files"
    )


@pytest.mark.parametrize("command", ["check", "prepare"])
def test_c21_17_a_symlink_loop_among_the_images_is_one_line(comp, command):
    image = comp.train_image(1)
    image.unlink()
    image.symlink_to(image)
    result = runner.invoke(app, [command, str(comp.root)])
    assert result.exit_code == 1
    assert (
        result.output.strip().splitlines()[-1]
        == f"error: {image}: a symbolic link loop, not an image (remove it or point it at the image)"
    )


# --- advice that leads somewhere -------------------------------------------------------------------------------


def test_c21_18_a_garbage_checkpoint_of_a_finished_fold_says_delete_the_folder(tmp_path):
    fold = tmp_path / "run" / "fold0"
    fold.mkdir(parents=True)
    (fold / "best.pt").write_bytes(b"garbage")
    (fold / "done.json").write_text("{}")
    with pytest.raises(KitError, match=rf"best.pt: not a readable checkpoint .*; delete the folder {fold} and rerun"):
        load_checkpoint(fold / "best.pt")
    (fold / "done.json").unlink()
    (fold / "last.pt").write_bytes(b"garbage")  # an unfinished fold's resumable checkpoint
    with pytest.raises(KitError, match=r"last.pt: .*; delete it to retrain fold0 from its start"):
        load_checkpoint(fold / "last.pt")


def test_c21_19_a_submission_with_a_bom_says_so(comp, tmp_path):
    header = "file_name," + ",".join(f"Point_M{i}_{a}" for i in range(4) for a in "XY")
    rows = [f"{name}," + ",".join(["1.0"] * 8) for name in comp.test_names]
    path = tmp_path / "sub.csv"
    path.write_text("\ufeff" + "\n".join([header, *rows]) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path), "--data", str(comp.root)])
    assert result.exit_code == 1
    assert "starts with a byte-order mark (BOM, U+FEFF)" in result.output and "without BOM" in result.output
