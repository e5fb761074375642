"""Image decoding: 3-channel RGB whatever the file holds, EXIF orientation honoured, bad files named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from kit.data.images import load_image, read_image_size
from kit.errors import DataError


def test_jpeg_is_rgb(tmp_path):
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    image = load_image(tmp_path / "blue.jpg")
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    assert image[..., 2].min() > 240 and image[..., :2].max() < 15


def test_grayscale_png_becomes_three_channels(tmp_path):
    gray = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = load_image(tmp_path / "gray.png")
    assert image.shape == (12, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_png_becomes_three_channels(tmp_path):
    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert image.shape == (12, 16, 3)
    np.testing.assert_array_equal(image[0, 0], [10, 20, 30])


def test_exif_orientation_is_honoured(tmp_path):
    # A 20x40 (HxW) picture with a bright block top-right, tagged "rotate 90 degrees clockwise to display".
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[1:7, 30:39] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 20, 3)
    assert read_image_size(tmp_path / "rotated.jpg") == (40, 20)
    expected = np.rot90(pixels, k=-1)  # clockwise: the top-right block ends bottom-right
    assert np.abs(image.astype(int) - expected).mean() < 8
    assert image[32:38, 14:18].min() > 200


def test_read_image_size_without_exif(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((7, 9, 3), np.uint8))
    assert read_image_size(tmp_path / "a.png") == (7, 9)


def test_missing_image(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        read_image_size(tmp_path / "nope.jpg")


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_image(tmp_path, data):
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(DataError, match="bad.png: (empty image file|cannot decode image)"):
        load_image(tmp_path / "bad.png")


def test_truncated_jpeg_is_an_error_whatever_its_name(tmp_path):
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encoded.tobytes()
    (tmp_path / "full.jpg").write_bytes(data + b"\x00\x00")  # zero padding after the end marker is fine
    assert load_image(tmp_path / "full.jpg").shape == (64, 64, 3)
    for name in ("cut.jpg", "cut.bin"):
        (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(DataError, match=f"{name}: truncated JPEG"):
            load_image(tmp_path / name)
