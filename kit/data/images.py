"""Image decoding: always RGB uint8 with 3 channels, EXIF orientation applied, bad files named."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kit.errors import DataError

_JPEG_MAGIC = b"\xff\xd8\xff"
# Decode straight to RGB where OpenCV can (4.10+), saving a colour conversion pass.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
# EXIF orientations 5-8 transpose the image, swapping width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def _is_truncated_jpeg(data: bytes) -> bool:
    # cv2 decodes a truncated JPEG to a full-size (partly grey) image with only a warning on stderr,
    # so check for the end-of-image marker ourselves (some writers pad the file after it).
    return not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image to an (H, W, 3) RGB uint8 array.

    Grayscale and RGBA images become 3-channel RGB; EXIF orientation is honoured (cv2 applies it).

    Raises:
        DataError: the file is missing, not an image, or a truncated JPEG.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    if not data:
        raise DataError(f"{path}: empty image file")
    if data.startswith(_JPEG_MAGIC) and _is_truncated_jpeg(data):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image (not an image file, or corrupt)")
    return image if _IMREAD_RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the file header only (no full decode)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL raises many types for a bad header
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__})") from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width
