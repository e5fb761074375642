"""Image decoding: always RGB uint8 with 3 channels, EXIF orientation applied, bad files named.

Every decode is preceded by a check of the size the file declares in its header against a pixel limit
(``max_image_pixels``), so a tiny file declaring a huge image fails with its name before anything is allocated.
``load_image`` reads, checks and decodes a file; its steps (``read_image_bytes``, ``check_image_data``,
``decode_image``) serve a caller that needs the bytes too, or a JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
DCT scaling, ``reduction``: several times faster than a full decode, for a crop that shrinks the image anyway).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from kit.errors import DataError, KitError

MAX_PIXELS_ENV = "KIT_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (they hold the image size): 0xC0-0xCF less DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEADER_BYTES = 1 << 16  # read_image_size reads this much first; a JPEG whose frame header is further is read whole
# Decode straight to RGB where OpenCV can (4.10+), saving a colour conversion pass.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
# EXIF orientations 5-8 transpose the image, swapping width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
# A JPEG decoded at 1/2, 1/4 or 1/8 scale (the reduced greyscale flag with IMREAD_COLOR_RGB gives reduced RGB).
_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_REDUCED_BGR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# libjpeg's warnings about the data itself (it decodes on, filling the damage with grey): errors in strict mode.
_CORRUPT_DATA = re.compile(
    r"Corrupt JPEG data[^\n]*|Premature end of JPEG file|Invalid SOS parameters[^\n]*|Inconsistent progression[^\n]*"
)
_capture_lock = threading.Lock()
_capture_pipe: tuple[int, int] | None = None  # (read, write) ends that take the process's stderr in a strict decode


class CorruptImage(DataError):
    """Image data the decoder repairs with only a warning (a strict decode refuses it)."""


def unreadable(path: Path, exc: OSError) -> DataError:
    """The one-line error for an image file that cannot be opened: missing, a dangling link or a loop, a folder."""
    if exc.errno == errno.ELOOP:
        return DataError(f"{path}: a symbolic link loop, not an image (remove it or point it at the image)")
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return DataError(f"{path}: a dangling symbolic link (its target {os.readlink(path)} is missing)")
        return DataError(f"{path}: image file not found")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image")
    return DataError(f"{path}: cannot read image ({exc.strerror or type(exc).__name__})")


def max_image_pixels() -> int:
    """The largest image (width x height) the kit decodes: ``$KIT_MAX_IMAGE_PIXELS``, else 50 megapixels.

    Raises:
        KitError: the environment variable is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise KitError(f"{MAX_PIXELS_ENV}={text[:40]!r}: expected a positive whole number of pixels")
    return value


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Set ``$KIT_MAX_IMAGE_PIXELS`` (seen by every thread and child process) for the block; None changes nothing."""
    if max_pixels is None:
        yield
        return
    if max_pixels < 1:
        raise KitError(f"the pixel limit must be positive, got {max_pixels}")
    old = os.environ.get(MAX_PIXELS_ENV)
    os.environ[MAX_PIXELS_ENV] = str(int(max_pixels))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(MAX_PIXELS_ENV, None)
        else:
            os.environ[MAX_PIXELS_ENV] = old


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment; None if ``data`` ends or the scan starts first."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image, start of scan
            return None
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG declares in the first bytes ``data``; None for other formats."""
    if data.startswith(_PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data.startswith(_JPEG_MAGIC):
        return _jpeg_frame_size(data)
    return None


def is_jpeg(data: bytes) -> bool:
    return data.startswith(_JPEG_MAGIC)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) OpenCV applies when it decodes this JPEG; 1 for none or another format.

    OpenCV reads the first APP1 segment as EXIF (whatever its signature) and the orientation tag of its first IFD.
    """
    if not is_jpeg(data):
        return 1
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 1
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
        elif marker in (0xD9, 0xDA):
            return 1
        else:
            length = struct.unpack_from(">H", data, pos + 2)[0]
            if marker == 0xE1:
                return _tiff_orientation(data[pos + 10 : pos + 2 + length])  # after the length and "Exif\0\0"
            pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of the first IFD of a TIFF header; 1 if absent, malformed or out of range."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or struct.unpack_from(order + "H", tiff, 2)[0] != 0x2A:
        return 1
    ifd = struct.unpack_from(order + "I", tiff, 4)[0]
    if ifd + 2 > len(tiff):
        return 1
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from(order + "H", tiff, ifd)[0], 12):
        if entry + 12 > len(tiff):
            return 1
        if struct.unpack_from(order + "H", tiff, entry)[0] == 0x0112:
            value = struct.unpack_from(order + "H", tiff, entry + 8)[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if width * height > limit:
        raise DataError(
            f"{path}: image declares {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over the limit "
            f"of {limit / 1e6:g} megapixels (raise it with ${MAX_PIXELS_ENV}, or --max-pixels of kit check, prepare "
            "or infer)"
        )


def _is_truncated_jpeg(data: bytes) -> bool:
    # cv2 decodes a truncated JPEG to a full-size (partly grey) image with only a warning on stderr,
    # so check for the end-of-image marker ourselves (some writers pad the file after it).
    return not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _flags(reduction: int) -> int:
    if reduction == 1:
        return _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR
    return (_REDUCED[reduction] | _IMREAD_RGB) if _IMREAD_RGB is not None else _REDUCED_BGR[reduction]


def _decode(path: Path, data: bytes, reduction: int = 1) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), _flags(reduction))
    except cv2.error as exc:
        reason = next((line for line in reversed(str(exc).splitlines()) if line.strip()), "")
        raise DataError(f"{path}: cannot decode image (OpenCV: {reason.strip()[:200]})") from None


def _decode_strict(path: Path, data: bytes, reduction: int = 1) -> np.ndarray | None:
    """Decode with the process's stderr (file descriptor 2) captured: libjpeg's corrupt-data warnings are errors."""
    global _capture_pipe
    with _capture_lock:
        if _capture_pipe is None:
            _capture_pipe = os.pipe()
            for fd in _capture_pipe:
                os.set_blocking(fd, False)  # a full pipe drops a message rather than block the decoder
        read_end, write_end = _capture_pipe
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(write_end, 2)
        try:
            image = _decode(path, data, reduction)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        messages = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 1 << 16):
                messages += chunk
    if messages:
        corrupt = _CORRUPT_DATA.search(messages.decode("utf-8", "replace"))
        if corrupt:
            raise CorruptImage(f"{path}: corrupt image data (decoder: {corrupt.group(0).strip()})")
        os.write(2, messages)  # anything else the decoder said, passed on
    return image


def _pil_size(path: Path, source: BinaryIO, failure: str = "cannot read image header") -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from PIL's header parser.

    Raises:
        DataError: PIL cannot read the header: ``{path}: {failure} ({exception type})``.
    """
    try:
        with Image.open(source) as image:
            width, height = image.size
            # PIL decodes a whole PNG to look for EXIF after the pixel data: read only what precedes it.
            header_only = image.format == "PNG" and "exif" not in image.info
            return width, height, 1 if header_only else image.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc})") from None
    except Exception as exc:  # PIL raises many types for a bad header
        raise DataError(f"{path}: {failure} ({type(exc).__name__})") from None


def load_image(path: str | Path, max_pixels: int | None = None, strict: bool = False) -> np.ndarray:
    """Decode an image to an (H, W, 3) RGB uint8 array.

    Grayscale and RGBA images become 3-channel RGB; EXIF orientation is honoured (cv2 applies it). The size the
    header declares is checked against the pixel limit before decoding.

    Args:
        path: the image file.
        max_pixels: the pixel limit (width x height); default ``max_image_pixels()``.
        strict: also fail on data the decoder repairs with only a warning (corrupt JPEG entropy data). It captures
            the process's stderr around each decode, one decode at a time: meant for one decoding thread per
            process (a warning printed meanwhile by another thread would be blamed on this image).

    Raises:
        DataError: the file is missing, not an image, a truncated JPEG, too large, or (``strict``) corrupt.
    """
    path = Path(path)
    data = read_image_bytes(path)
    check_image_data(path, data, max_pixels)
    return decode_image(path, data, strict)


def read_image_bytes(path: Path) -> bytes:
    """The whole file.

    Raises:
        DataError: the file is missing, a dangling symbolic link or a loop of them, a folder, or unreadable.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None


def check_image_data(path: Path, data: bytes, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) the file's header declares (before EXIF orientation), checked before any decoding.

    Raises:
        DataError: the data is empty, not an image, declares more pixels than the limit (``max_pixels``, default
            ``max_image_pixels()``), or is a truncated JPEG.
    """
    if not data:
        raise DataError(f"{path}: empty image file")
    size = _declared_size(data)
    if size is None:
        size = _pil_size(path, io.BytesIO(data), "cannot decode image: not an image file, or corrupt")[:2]
    _check_pixels(path, *size, max_pixels)
    if data.startswith(_JPEG_MAGIC) and _is_truncated_jpeg(data):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    return size


def decode_image(path: Path, data: bytes, strict: bool = False, reduction: int = 1) -> np.ndarray:
    """Decode checked data (``check_image_data``) to an (H, W, 3) RGB uint8 array, EXIF orientation applied.

    Args:
        path: the file, for error messages.
        data: its bytes.
        strict: fail on corrupt data the decoder repairs (see ``load_image``).
        reduction: 1, or (JPEG only) 2, 4 or 8: libjpeg's DCT scaling decodes at 1/``reduction`` scale, each
            side ``ceil(side / reduction)``, mapping pixel edges like an area resize (before orientation:
            ``x_small + 0.5 = (x + 0.5) / reduction``).

    Raises:
        DataError: the data cannot be decoded, or (``strict``) is corrupt.
        ValueError: ``reduction`` is not 1, 2, 4 or 8, or is not 1 for data other than a JPEG.
    """
    if reduction != 1 and (reduction not in _REDUCED or not is_jpeg(data)):
        raise ValueError(f"reduction must be 1, or 2, 4 or 8 for a JPEG, got {reduction}")
    image = _decode_strict(path, data, reduction) if strict else _decode(path, data, reduction)
    if image is None:
        raise DataError(f"{path}: cannot decode image (not an image file, or corrupt)")
    return image if _IMREAD_RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the file header only (no full decode).

    Raises:
        DataError: the file is missing, its header is unreadable, or it declares more pixels than the limit
            (``max_pixels``, default ``max_image_pixels()``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            size = _declared_size(head)
            if size is None and head.startswith(_JPEG_MAGIC) and len(head) == _HEADER_BYTES:
                size = _declared_size(head + f.read())
            if size is not None:
                _check_pixels(path, *size, max_pixels)
            f.seek(0)
            # PIL parses the header from memory when the file was read whole.
            width, height, orientation = _pil_size(path, io.BytesIO(head) if len(head) < _HEADER_BYTES else f)
    except OSError as exc:
        raise unreadable(path, exc) from None
    _check_pixels(path, width, height, max_pixels)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width
