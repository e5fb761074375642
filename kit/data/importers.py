"""Standard landmark datasets (iBUG ``.pts``, WFLW annotation lines, a CSV table) as a competition folder.

Each face is cut like the competition's crops: the box of its points scaled by a margin (optionally jittered),
resized so its short side is a given size, saved as JPEG, with labels in crop pixels. Faces of one photo share a
group (``train/groups.csv``), so ``kit folds`` keeps them in one fold. Everything is read and checked before
anything is written, and the folder is built under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kit.data.competition import check_nme_points, write_nme_points
from kit.data.images import max_image_pixels
from kit.data.landmarks import FILE_COLUMN, point_columns
from kit.errors import DataError
from kit.io import refuse_inside, swap_in_folder

FORMATS = ("pts", "wflw", "csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
IMPORT_RECORD = "import.json"
DEFAULT_REQUESTED = 30  # point indices per test image, as in the competition
# How far outside its photo a point may lie, as a share of the photo's size, before the label is called broken.
OUTSIDE_TOLERANCE = 0.25
# The outer eye corners of the iBUG 68-point scheme: the usual "inter-ocular" normaliser of NME.
IBUG68_NME_POINTS = (36, 45)


@dataclass(frozen=True)
class Face:
    """One labelled face: its photo, its points in photo pixels and the photo's group."""

    image: Path
    points: np.ndarray  # (P, 2) float64, photo pixels
    group: str
    origin: str  # where the label came from, for messages ("a.pts", "list.txt: line 3")
    stem: str  # the crop's file name without suffix

    @property
    def name(self) -> str:
        return self.stem + ".jpg"


@dataclass(frozen=True)
class CropSpec:
    """How each face is cut."""

    margin: float = 1.5  # crop box = the box of the points scaled by this, around its centre
    jitter: float = 0.0  # random shift of the centre (share of the box) and log-scale change of the box
    size: int = 256  # short side of the saved crop, pixels
    round_labels: bool = True  # integer labels, as in the competition
    quality: int = 95  # JPEG quality
    seed: int = 0

    def __post_init__(self):
        if not self.margin > 0:
            raise ValueError(f"margin must be positive, got {self.margin}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")


@dataclass(frozen=True)
class ImportSummary:
    out_dir: Path
    n_train: int
    n_test: int
    n_points: int
    n_groups: int
    nme_points: tuple[int, int] | None


# ---------------------------------------------------------------- readers


def _parse_coords(tokens: Sequence[str], origin: str) -> np.ndarray:
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise DataError(f"{origin}: '{bad[:40]}' is not a number") from None
    if not np.isfinite(values).all():
        raise DataError(f"{origin}: coordinates must be finite")
    return values.reshape(-1, 2)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_pts(path: Path) -> np.ndarray:
    """Points of an iBUG ``.pts`` file, with or without the ``version: 1 / n_points: N / { }`` wrapper.

    Raises:
        DataError: naming the file and line: garbage, a line that is not two numbers, or a count that differs
            from the declared ``n_points``.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    declared: int | None = None
    rows: list[list[str]] = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == "n_points":
            try:
                declared = int(value)
            except ValueError:
                raise DataError(f"{path}: line {line_no}: n_points is not an integer ('{value.strip()}')") from None
            continue
        if (colon and key.strip().lower() == "version") or line in ("{", "}"):
            continue
        tokens = line.split()
        if len(tokens) != 2 or not all(_is_number(t) for t in tokens):
            raise DataError(f"{path}: line {line_no}: expected two numbers 'x y', found '{line[:60]}'")
        rows.append(tokens)
    if not rows:
        raise DataError(f"{path}: no points")
    if declared is not None and declared != len(rows):
        raise DataError(f"{path}: declares n_points: {declared} but holds {len(rows)} points")
    return _parse_coords([t for row in rows for t in row], str(path))


_FACE_SUFFIX = re.compile(r"^(.+)_\d+$")


def photo_group(stem: str) -> str:
    """The photo a face crop's stem names: 300-W writes the K-th face of photo P as ``P_K``."""
    match = _FACE_SUFFIX.match(stem)
    return match.group(1) if match else stem


def _find_image(pts: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (pts.with_suffix(suffix), pts.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    raise DataError(f"{pts}: no image beside it (looked for {pts.stem}{{{','.join(IMAGE_SUFFIXES)}}})")


def read_pts_faces(sources: Iterable[Path]) -> list[Face]:
    """Every ``.pts`` (and the same-stem image beside it) under the given folders or files, sorted by path."""
    faces = []
    for source in sources:
        source = Path(source)
        if source.is_file():
            files = [source]
        elif source.is_dir():
            files = sorted(source.rglob("*.pts"))
            if not files:
                raise DataError(f"{source}: no .pts files in this folder")
        else:
            raise DataError(f"{source}: not found")
        for pts in files:
            faces.append(Face(_find_image(pts), read_pts(pts), photo_group(pts.stem), str(pts), pts.stem))
    return faces


def read_wflw_faces(annotations: Path, image_root: Path | None = None) -> list[Face]:
    """WFLW annotation lines: 2N coordinates, the box (4), attributes (6), then the image path.

    Image paths are relative to ``image_root`` (default: the annotation file's folder). Faces in one image share a
    group; each gets the stem ``<image stem>_<K>``.
    """
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DataError(f"{annotations}: not found")
    root = Path(image_root) if image_root is not None else annotations.parent
    faces: list[Face] = []
    per_image: dict[str, int] = {}
    for line_no, raw in enumerate(annotations.read_text(encoding="utf-8-sig").splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        origin = f"{annotations}: line {line_no}"
        n_coords = len(tokens) - 11
        if n_coords < 2 or n_coords % 2:
            raise DataError(f"{origin}: expected 2N coordinates, 4 box values, 6 attributes and an image path")
        points = _parse_coords(tokens[:n_coords], origin)
        rel = tokens[-1]
        image = root / rel
        if not image.is_file():
            raise DataError(f"{origin}: image not found: {image}")
        k = per_image.get(rel, 0) + 1
        per_image[rel] = k
        faces.append(Face(image, points, rel, origin, f"{Path(rel).stem}_{k}"))
    if not faces:
        raise DataError(f"{annotations}: no annotation lines")
    return faces


def read_csv_faces(table: Path) -> list[Face]:
    """A table of ``image, x0, y0, x1, y1, ...`` (comma or TAB; an optional header), paths relative to the table.

    Faces of one image share a group.
    """
    table = Path(table)
    if not table.is_file():
        raise DataError(f"{table}: not found")
    with open(table, encoding="utf-8-sig", newline="") as f:
        first = f.readline()
        f.seek(0)
        rows = list(csv.reader(f, delimiter="\t" if "\t" in first else ","))
    faces: list[Face] = []
    per_image: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if line_no == 1 and not all(_is_number(cell) for cell in row[1:]):
            continue  # a header
        origin = f"{table}: line {line_no}"
        if len(row) < 3 or (len(row) - 1) % 2:
            raise DataError(f"{origin}: expected an image path and pairs of coordinates, found {len(row)} fields")
        image = table.parent / row[0].strip()
        if not image.is_file():
            raise DataError(f"{origin}: image not found: {image}")
        k = per_image.get(row[0], 0) + 1
        per_image[row[0]] = k
        faces.append(Face(image, _parse_coords(row[1:], origin), row[0].strip(), origin, f"{image.stem}_{k}"))
    if not faces:
        raise DataError(f"{table}: no rows")
    return faces


def read_faces(fmt: str, sources: Sequence[Path], image_root: Path | None = None) -> list[Face]:
    """The faces of ``sources`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "pts":
        return read_pts_faces(sources)
    if fmt == "wflw":
        return [face for source in sources for face in read_wflw_faces(source, image_root)]
    if fmt == "csv":
        return [face for source in sources for face in read_csv_faces(source)]
    raise DataError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


# ---------------------------------------------------------------- checks


def _stored_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) of the stored pixel grid, EXIF orientation ignored as the labels do; header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL raises many types for a bad header
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}); not an image, or corrupt") from None
    limit = max_pixels or max_image_pixels()
    if width * height > limit:
        raise DataError(f"{path}: {width}x{height} is over the {limit:,}-pixel limit")
    return width, height


def check_faces(faces: Sequence[Face], max_pixels: int | None = None) -> int:
    """Check every face before anything is written; returns the number of points.

    Raises:
        DataError: naming the file: a point count that differs from the first face's, two faces with one name, a
            missing or unreadable image header, or points far outside the photo.
    """
    if not faces:
        raise DataError("no faces to import")
    n_points = len(faces[0].points)
    seen: dict[str, str] = {}
    for face in faces:
        if len(face.points) != n_points:
            raise DataError(f"{face.origin}: {len(face.points)} points, but {faces[0].origin} has {n_points}")
        name = face.name
        if name in seen:
            raise DataError(f"{face.origin}: duplicate name '{name}' (also {seen[name]}); import the two apart")
        seen[name] = face.origin
        width, height = _stored_size(face.image, max_pixels)
        low = -OUTSIDE_TOLERANCE * np.array([width, height])
        high = (1 + OUTSIDE_TOLERANCE) * np.array([width, height])
        outside = np.flatnonzero(((face.points < low) | (face.points > high)).any(axis=1))
        if len(outside):
            i = int(outside[0])
            x, y = face.points[i]
            raise DataError(
                f"{face.origin}: point {i} ({x:.1f}, {y:.1f}) lies far outside its {width}x{height} photo "
                f"{face.image.name} ({len(outside)} such points)"
            )
        extent = face.points.max(axis=0) - face.points.min(axis=0)
        if not (extent > 0).all():
            raise DataError(f"{face.origin}: the points span no area (all on one line or one point)")
    return n_points


# ---------------------------------------------------------------- cropping


def crop_box(points: np.ndarray, spec: CropSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """The crop box ``(x0, y0, x1, y1)`` of a face: its points' box scaled by ``spec.margin``, maybe jittered."""
    low, high = points.min(axis=0), points.max(axis=0)
    centre, extent = (low + high) / 2, (high - low) * spec.margin
    if spec.jitter > 0 and rng is not None:
        centre = centre + rng.uniform(-spec.jitter, spec.jitter, 2) * extent
        extent = extent * np.exp(rng.uniform(-spec.jitter, spec.jitter))
    return np.concatenate([centre - extent / 2, centre + extent / 2])


def cut_face(image: np.ndarray, points: np.ndarray, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``box`` out of ``image`` (zero padding where it leaves the photo), scaled so its short side is ``size``.

    Returns the crop and the points in its pixels (pixel centres map to pixel centres).
    """
    x0, y0 = np.floor(box[:2]).astype(int)
    x1, y1 = np.ceil(box[2:]).astype(int)
    width, height = x1 - x0, y1 - y0
    scale = size / min(width, height)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = out_w / width, out_h / height
    # One affine warp does crop, padding and resizing; a large shrink goes through INTER_AREA first (no aliasing).
    small = image
    if scale < 0.5:
        shrunk = (max(1, round(image.shape[1] * scale * 2)), max(1, round(image.shape[0] * scale * 2)))
        small = cv2.resize(image, shrunk, interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
    # Pixel centres map to pixel centres: x_photo = (x_crop + 0.5) / sx - 0.5 + x0, then into the shrunk photo.
    ax, ay = fx / sx, fy / sy
    bx = (0.5 / sx + x0) * fx - 0.5
    by = (0.5 / sy + y0) * fy - 0.5
    matrix = np.array([[ax, 0, bx], [0, ay, by]], dtype=np.float64)
    crop = cv2.warpAffine(
        small,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    out_points = np.empty_like(points, dtype=np.float64)
    out_points[:, 0] = (points[:, 0] - x0 + 0.5) * sx - 0.5
    out_points[:, 1] = (points[:, 1] - y0 + 0.5) * sy - 0.5
    return crop, out_points


def _decode_photo(path: Path) -> np.ndarray:
    # Labels refer to the stored pixel grid (annotation tools ignore EXIF orientation), so ignore it here too.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DataError(f"{path}: cannot decode image (not an image file, or corrupt)")
    return image


# ---------------------------------------------------------------- writing


def split_test(faces: Sequence[Face], fraction: float, seed: int) -> tuple[list[Face], list[Face]]:
    """Split faces into train and test by photo group: about ``fraction`` of the groups go to the test set."""
    if not 0 < fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction}")
    groups = sorted({face.group for face in faces})
    rng = np.random.default_rng(seed)
    n_test = max(1, round(fraction * len(groups)))
    if n_test >= len(groups):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(groups)} photos and keep some to train on")
    test_groups = set(rng.choice(groups, size=n_test, replace=False).tolist())
    return [f for f in faces if f.group not in test_groups], [f for f in faces if f.group in test_groups]


def _check_out_dir(out_dir: Path, force: bool) -> None:
    for parent in out_dir.resolve().parents:
        if (parent / "train" / "landmarks.csv").is_file():
            refuse_inside(out_dir, parent, "output folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        if out_dir.is_dir():
            return
        raise DataError(f"{out_dir}: exists and is not a folder")
    if not force:
        raise DataError(f"{out_dir}: not empty; choose a new folder, or --force to replace an earlier import")
    if not (out_dir / IMPORT_RECORD).is_file():
        raise DataError(f"{out_dir}: not made by kit import (no {IMPORT_RECORD}); --force only replaces an import")


def _row(name: str, points: np.ndarray, round_labels: bool) -> str:
    values = np.floor(points.ravel() + 0.5).astype(np.int64).tolist() if round_labels else points.ravel().tolist()
    text = map(str, values) if round_labels else (f"{v:.3f}" for v in values)
    return name + "\t" + "\t".join(text) + "\n"


def _write_crops(
    faces: Sequence[Face],
    image_dir: Path,
    spec: CropSpec,
    offset: int,
    progress: Callable[[int], None] | None,
    threads: int,
) -> list[np.ndarray]:
    """Cut and save every face's crop; returns the points in crop pixels, in order."""

    def one(index: int) -> np.ndarray:
        face = faces[index]
        rng = np.random.default_rng([spec.seed, offset + index])
        box = crop_box(face.points, spec, rng)
        crop, points = cut_face(_decode_photo(face.image), face.points, box, spec.size)
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, spec.quality])
        if not ok:
            raise DataError(f"{face.image}: cannot encode its crop as JPEG")
        (image_dir / face.name).write_bytes(data.tobytes())
        if progress is not None:
            progress(1)
        return points

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # cv2 releases the GIL while decoding
        return list(pool.map(one, range(len(faces))))


def import_competition(
    faces: Sequence[Face],
    out_dir: Path,
    spec: CropSpec = CropSpec(),
    test_faces: Sequence[Face] | None = None,
    test_fraction: float | None = None,
    n_requested: int | None = None,
    nme_points: tuple[int, int] | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    sources: Sequence[str] = (),
) -> ImportSummary:
    """Write ``faces`` as a competition in ``out_dir``: train/, test/, private/ answers, groups and provenance.

    The test set is ``test_faces``, or ``test_fraction`` of the photos (by group), with ``n_requested`` random
    point indices per image (default: the competition's 30, or every point of fewer). With 68 points and no
    ``nme_points``, NME is normalised by the outer eye corners.

    Raises:
        DataError: bad input (naming the file), or an output folder that is not empty (without ``force``) or not
            an earlier import (with it). Nothing is left behind on failure.
    """
    out_dir = Path(out_dir)
    faces = list(faces)
    if test_faces is not None and test_fraction is not None:
        raise ValueError("give test faces or a test fraction, not both")
    if test_faces is None:
        if test_fraction is None:
            raise ValueError("give test faces or a test fraction: the competition layout needs a test set")
        faces, test_faces = split_test(faces, test_fraction, spec.seed)
    test_faces = list(test_faces)
    n_points = check_faces(faces + test_faces)
    n_requested = min(DEFAULT_REQUESTED, n_points) if n_requested is None else n_requested
    if not 1 <= n_requested <= n_points:
        raise ValueError(f"requested points per test image must be in 1..{n_points}, got {n_requested}")
    if nme_points is None and n_points == 68:
        nme_points = IBUG68_NME_POINTS
    if nme_points is not None:
        check_nme_points(nme_points, n_points, "--nme-points")
    _check_out_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.partial"
    threads = threads or min(4, os.cpu_count() or 1)
    try:
        for sub in ("train/images", "test/images", "private"):
            (tmp / sub).mkdir(parents=True)
        train_points = _write_crops(faces, tmp / "train" / "images", spec, 0, progress, threads)
        test_points = _write_crops(test_faces, tmp / "test" / "images", spec, len(faces), progress, threads)
        header = "\t".join([FILE_COLUMN, *point_columns(n_points)]) + "\n"
        with open(tmp / "train" / "landmarks.csv", "w") as f:
            f.write(header)
            f.writelines(_row(face.name, p, spec.round_labels) for face, p in zip(faces, train_points, strict=True))
        with open(tmp / "train" / "groups.csv", "w") as f:
            f.write("file_name,group\n")
            f.writelines(f"{face.name},{face.group}\n" for face in faces)
        with open(tmp / "private" / "test_landmarks.csv", "w") as f:
            f.write(header)
            f.writelines(_row(face.name, p, spec.round_labels) for face, p in zip(test_faces, test_points, strict=True))
        rng = np.random.default_rng([spec.seed, 1])
        with open(tmp / "test" / "test_points.csv", "w") as f:
            f.write("file_name\tpoint_index_list\n")
            for face in test_faces:
                requested = rng.choice(n_points, size=n_requested, replace=False)
                f.write(f"{face.name}\t{requested.tolist()}\n")
        if nme_points is not None:
            write_nme_points(tmp, nme_points, n_points)
        record = {
            "sources": list(sources),
            "crop": asdict(spec),
            "n_train": len(faces),
            "n_test": len(test_faces),
            "n_points": n_points,
            "test_fraction": test_fraction,
            "n_requested": n_requested,
            "nme_points": list(nme_points) if nme_points else None,
        }
        (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        swap_in_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportSummary(
        out_dir=out_dir,
        n_train=len(faces),
        n_test=len(test_faces),
        n_points=n_points,
        n_groups=len({face.group for face in faces}),
        nme_points=nme_points,
    )
