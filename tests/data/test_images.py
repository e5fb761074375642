"""Image decoding: 3-channel RGB whatever the file holds, EXIF orientation honoured, bad files named."""

from __future__ import annotations

import functools
import io
import os
import resource
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from kit.data.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    decode_image,
    jpeg_orientation,
    load_image,
    max_image_pixels,
    pixel_limit,
    read_image_size,
)
from kit.errors import DataError, KitError


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


# Hostile files, built for real: a PNG whose header declares a huge image, a real decompression bomb, a JPEG whose
# entropy-coded data is damaged behind an intact end marker.


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def hostile_png(width: int, height: int) -> bytes:
    """A valid 2x2 PNG whose IHDR is patched (CRC fixed) to declare ``width`` x ``height``: a few dozen bytes."""
    data = bytearray(cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@functools.cache
def bomb_png(side: int) -> bytes:
    """A real, fully valid all-black grayscale PNG of ``side`` x ``side``, streamed (never held in memory)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def corrupt_jpeg(seed: int = 0) -> bytes:
    """A 256 px JPEG whose scan data is overwritten mid-way, headers and end marker intact.

    The 64 bytes are a stray restart marker then random bytes: random bytes alone can decode without a warning
    (Huffman codes resynchronise), which no decoder can tell from valid data.
    """
    rng = np.random.default_rng(seed)
    pixels = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
    data = bytearray(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    scan = data.index(b"\xff\xda")
    middle = (scan + len(data)) // 2
    data[middle : middle + 64] = b"\xff\xd3" + rng.integers(0, 256, 62, dtype=np.uint8).tobytes()
    assert data.endswith(b"\xff\xd9")
    return bytes(data)


@pytest.fixture
def no_decode(monkeypatch):
    """Fail the test if any image is decoded."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


def test_header_declaring_a_huge_image_fails_before_decoding(tmp_path, no_decode):
    path = tmp_path / "hostile.png"
    path.write_bytes(hostile_png(60000, 60000))
    assert path.stat().st_size < 100
    for read in (load_image, read_image_size):
        with pytest.raises(DataError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: image declares 60000x60000 pixels (3600.0 megapixels)"), message
        assert "over the limit of 50 megapixels" in message and "\n" not in message


def test_real_decompression_bomb_is_refused_without_allocating(tmp_path, no_decode):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000))
    assert path.stat().st_size < 2_000_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for read in (load_image, read_image_size):
        with pytest.raises(DataError, match=r"bomb\.png: image declares 20000x20000 pixels \(400\.0 megapixels\)"):
            read(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000


def test_pixel_limit_from_argument_and_environment(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((40, 30, 3), np.uint8))  # 1200 pixels
    assert load_image(tmp_path / "a.jpg", max_pixels=1200).shape == (40, 30, 3)
    assert read_image_size(tmp_path / "a.jpg", max_pixels=1200) == (40, 30)
    with pytest.raises(DataError, match=r"a\.jpg: image declares 30x40 pixels .* limit of 0\.001199 megapixels"):
        load_image(tmp_path / "a.jpg", max_pixels=1199)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert max_image_pixels() == 1000
    for read in (load_image, read_image_size):
        with pytest.raises(DataError, match=r"a\.jpg: image declares 30x40 pixels"):
            read(tmp_path / "a.jpg")
    with pixel_limit(5000):
        assert max_image_pixels() == 5000 and load_image(tmp_path / "a.jpg").shape == (40, 30, 3)
    assert max_image_pixels() == 1000
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 50_000_000
    with pixel_limit(5000):
        pass
    assert MAX_PIXELS_ENV not in os.environ
    for bad in ("abc", "0", "-5", "1e6"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(KitError, match=f"KIT_MAX_IMAGE_PIXELS='{bad}': expected a positive whole number"):
            load_image(tmp_path / "a.jpg")


def test_jpeg_size_found_past_a_large_header_segment(tmp_path):
    ok, encoded = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    data = encoded.tobytes()
    comment = b"\xff\xfe" + struct.pack(">H", 65000) + bytes(64998)  # a 65 kB COM segment before the frame header
    (tmp_path / "long.jpg").write_bytes(data[:2] + comment + data[2:])
    assert read_image_size(tmp_path / "long.jpg") == (30, 50)
    assert load_image(tmp_path / "long.jpg").shape == (30, 50, 3)
    for read in (load_image, read_image_size):
        with pytest.raises(DataError, match=r"long\.jpg: image declares 50x30 pixels"):
            read(tmp_path / "long.jpg", max_pixels=1000)


def test_opencv_refusal_is_a_named_one_line_error(tmp_path):
    (tmp_path / "hostile.png").write_bytes(hostile_png(60000, 60000))
    # Above OpenCV's own limit (2^30 pixels), which it enforces before allocating.
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "hostile.png", max_pixels=10**10)
    assert str(info.value).startswith(f"{tmp_path / 'hostile.png'}: cannot decode image (OpenCV: ")
    assert "\n" not in str(info.value)


def test_corrupt_jpeg_data_is_an_error_in_strict_mode(tmp_path, capfd):
    good = cv2.imencode(".jpg", np.full((64, 64, 3), 100, np.uint8))[1].tobytes()
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "bad.jpg").write_bytes(corrupt_jpeg())
    np.testing.assert_array_equal(load_image(tmp_path / "good.jpg", strict=True), load_image(tmp_path / "good.jpg"))
    # OpenCV repairs the damage with grey, saying so only on stderr, unnamed: the default mode cannot see it.
    assert load_image(tmp_path / "bad.jpg").shape == (256, 256, 3)
    assert "Corrupt JPEG data" in capfd.readouterr().err
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "bad.jpg", strict=True)
    assert str(info.value) == (
        f"{tmp_path / 'bad.jpg'}: corrupt image data (decoder: Corrupt JPEG data: premature end of data segment)"
    )
    assert capfd.readouterr().err == ""  # the decoder's own line was captured, not printed
    print("stderr works again", file=sys.stderr)
    assert capfd.readouterr().err == "stderr works again\n"


def test_strict_mode_passes_on_harmless_decoder_messages(tmp_path, capfd):
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    data[data.index(b"JFIF\x00") + 5] = 2  # JFIF version 2.01: libjpeg warns, the pixels are fine
    (tmp_path / "jfif2.jpg").write_bytes(data)
    assert load_image(tmp_path / "jfif2.jpg", strict=True).shape == (16, 16, 3)
    assert "unknown JFIF revision number 2.01" in capfd.readouterr().err


@pytest.mark.parametrize("reduction", [2, 4, 8])
def test_a_reduced_decode_is_rgb_at_1_over_f_and_strict_too(tmp_path, reduction):
    bgr = np.random.default_rng(0).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", bgr)[1].tobytes()
    image = decode_image(tmp_path / "a.jpg", data, reduction=reduction)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), {2: 17, 4: 33, 8: 65}[reduction])  # IMREAD_REDUCED_COLOR
    assert image.shape == (-(-61 // reduction), -(-83 // reduction), 3)
    np.testing.assert_array_equal(image, expected[..., ::-1])
    with pytest.raises(DataError, match="corrupt image data"):
        decode_image(tmp_path / "bad.jpg", corrupt_jpeg(), strict=True, reduction=reduction)


def test_only_a_jpeg_decodes_at_reduced_scale(tmp_path):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="reduction must be 1, or 2, 4 or 8 for a JPEG"):
        decode_image(tmp_path / "a.png", png, reduction=2)
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="got 3"):
        decode_image(tmp_path / "a.jpg", jpeg, reduction=3)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("endian", ["<", ">"])
def test_jpeg_orientation_is_the_one_opencv_applies(tmp_path, orientation, endian):
    pixels = np.zeros((20, 40, 3), np.uint8)
    exif = Image.Exif()
    exif.endian = endian
    exif[0x010F] = "a camera maker, a tag before the orientation"
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    data = buffer.getvalue()
    assert jpeg_orientation(data) == orientation
    assert decode_image(tmp_path / "a.jpg", data).shape == ((40, 20, 3) if orientation >= 5 else (20, 40, 3))


def test_jpeg_orientation_without_exif_is_1():
    pixels = np.zeros((20, 40, 3), np.uint8)
    assert jpeg_orientation(cv2.imencode(".jpg", pixels)[1].tobytes()) == 1
    assert jpeg_orientation(cv2.imencode(".png", pixels)[1].tobytes()) == 1
    exif = Image.Exif()
    exif[0x0112] = 9  # out of range: OpenCV ignores it
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes())
    assert jpeg_orientation(buffer.getvalue()) == 1
