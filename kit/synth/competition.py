"""Write a synthetic competition folder in the exact layout of the real one, atomically."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kit.io import refuse_inside, swap_in_folder
from kit.synth.background import noise_bank
from kit.synth.effects import encode_jpeg
from kit.synth.face import make_template
from kit.synth.scene import landmark_model, make_image

# Files only this generator writes together: --force replaces a folder only if it has them.
_SYNTH_FILES = ("train/landmarks.csv", "private/test_landmarks.csv", "private/flip_permutation.txt")


@dataclass(frozen=True)
class SynthSummary:
    """What a generation run wrote and how fast."""

    out_dir: Path
    n_train: int
    n_test: int
    n_points: int
    n_requested: int
    min_size: tuple[int, int]  # smallest (width, height) seen, per axis
    max_size: tuple[int, int]  # largest (width, height) seen, per axis
    elapsed_s: float

    @property
    def n_images(self) -> int:
        return self.n_train + self.n_test

    @property
    def images_per_second(self) -> float:
        return self.n_images / max(self.elapsed_s, 1e-9)


def landmarks_header(n_points: int) -> str:
    """Header line of a landmarks CSV: file_name then Point_M{i}_X, Point_M{i}_Y."""
    return "\t".join(["file_name"] + [f"Point_M{i}_{a}" for i in range(n_points) for a in "XY"])


def _landmarks_row(name: str, points: np.ndarray) -> str:
    ints = np.floor(points.ravel() + 0.5).astype(np.int64)
    return name + "\t" + "\t".join(map(str, ints.tolist()))


def _check_args(n_train: int, n_test: int, seed: int, n_points: int, n_requested: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be at least 1, got {n_train} and {n_test}")
    if not 1 <= n_requested <= n_points:
        raise ValueError(f"n_requested must be in 1..n_points ({n_points}), got {n_requested}")


def is_synth_competition(folder: Path) -> bool:
    """Whether ``folder`` holds a competition written by this generator (the layout with its private answers)."""
    return all((folder / rel).is_file() for rel in _SYNTH_FILES)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse an output folder inside a competition folder, or one that would replace anything but an old synth.

    Raises:
        KitError: ``out_dir`` is inside a competition folder (an ancestor holds ``train/landmarks.csv``).
        ValueError: ``out_dir`` is not an empty folder (without ``force``), or not a synthetic competition (with it).
    """
    for parent in out_dir.resolve().parents:
        if (parent / "train" / "landmarks.csv").is_file():
            refuse_inside(out_dir, parent, "output folder")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ValueError(f"{out_dir} already exists and is not a folder (or is a link); choose a new folder")
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise ValueError(
            f"{out_dir} already exists and is not an empty folder; choose a new folder, empty it, "
            "or pass --force to replace an old synthetic competition"
        )
    missing = [rel for rel in _SYNTH_FILES if not (out_dir / rel).is_file()]
    if missing:
        raise ValueError(
            f"{out_dir} is not a synthetic competition (no {missing[0]}); --force only replaces one: "
            "choose a new folder"
        )


def generate_competition(
    out_dir: Path,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    n_points: int = 971,
    n_requested: int = 30,
    progress: Callable[[int], None] | None = None,
    force: bool = False,
) -> SynthSummary:
    """Render a synthetic "Thousand Facial Landmarks" competition into ``out_dir``.

    Writes ``train/landmarks.csv``, ``train/images/``, ``test/test_points.csv``, ``test/images/``,
    ``private/test_landmarks.csv`` (the test answers) and ``private/flip_permutation.txt``. Everything goes to a
    temporary sibling folder first and is renamed into place at the end; with ``force`` an old synthetic
    competition in ``out_dir`` is removed only after that, so a failed or interrupted run leaves it as it was.
    The same seed writes the same bytes.

    Args:
        out_dir: folder to create; it must not exist or be empty (or, with ``force``, be a synthetic competition),
            and it must not lie inside a competition folder.
        n_train: training images.
        n_test: test images.
        seed: random seed; image i depends only on (seed, i).
        n_points: landmarks per face (at least 50).
        n_requested: point indices requested per test image.
        progress: called with the number of images just written.
        force: replace an existing synthetic competition in ``out_dir``.

    Raises:
        ValueError: ``out_dir`` is not empty (without ``force``) or not a synthetic competition (with it), or the
            counts are out of range.
        KitError: ``out_dir`` is inside a competition folder.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_args(n_train, n_test, seed, n_points, n_requested)
    _check_out_dir(out_dir, force)
    template = make_template(n_points)
    model = landmark_model(template)
    noise = noise_bank(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.partial"
    tmp.mkdir()
    sizes: list[tuple[int, int]] = []
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # images are small: OpenCV's thread pool only adds overhead
    try:
        for sub in ("train/images", "test/images", "private"):
            (tmp / sub).mkdir(parents=True)
        width = max(6, len(str(n_train + n_test - 1)))
        header = landmarks_header(n_points) + "\n"
        with (
            open(tmp / "train" / "landmarks.csv", "w") as train_csv,
            open(tmp / "private" / "test_landmarks.csv", "w") as answers_csv,
            open(tmp / "test" / "test_points.csv", "w") as points_csv,
        ):
            train_csv.write(header)
            answers_csv.write(header)
            points_csv.write("file_name\tpoint_index_list\n")
            for i in range(n_train + n_test):
                rng = np.random.default_rng([seed, i])
                img, landmarks = make_image(rng, model, noise)
                name = f"{i:0{width}d}.jpg"
                split = "train" if i < n_train else "test"
                (tmp / split / "images" / name).write_bytes(encode_jpeg(rng, img))
                sizes.append((img.shape[1], img.shape[0]))
                row = _landmarks_row(name, landmarks) + "\n"
                if split == "train":
                    train_csv.write(row)
                else:
                    answers_csv.write(row)
                    requested = rng.choice(n_points, size=n_requested, replace=False)
                    points_csv.write(f"{name}\t{requested.tolist()}\n")
                if progress is not None:
                    progress(1)
        (tmp / "private" / "flip_permutation.txt").write_text("".join(f"{int(j)}\n" for j in template.flip_permutation))
        swap_in_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cv2.setNumThreads(cv_threads)
    size = np.array(sizes)
    return SynthSummary(
        out_dir=out_dir,
        n_train=n_train,
        n_test=n_test,
        n_points=n_points,
        n_requested=n_requested,
        min_size=tuple(int(v) for v in size.min(axis=0)),
        max_size=tuple(int(v) for v in size.max(axis=0)),
        elapsed_s=time.perf_counter() - start,
    )
