"""Decoding, normalising, resizing and encoding scans; hand-made inputs in every supported format."""
import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from classeg import imaging
from classeg.imaging import DecodeError


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tiff(array):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("data, name, expected", [
    (b"II*\x00rest", "", "tiff"), (b"MM\x00*rest", "", "tiff"), (b"\xff\xd8\xff\xe0", "", "jpeg"),
    (b"\x89PNG\r\n\x1a\nxx", "", "png"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "", "webp"),
    (b"MATLAB 7.3 MAT-file, Platform", "", "mat"), (b"\x00" * 128 + b"DICM" + b"\x00" * 8, "", "dicom"),
    (b"hello", "x.dcm", "dicom"), (b"hello", "notes.txt", "unknown"),
])
def test_sniff_format_table(data, name, expected):
    assert imaging.sniff_format(data, name) == expected


def test_sniff_empty_is_an_error():
    with pytest.raises(DecodeError) as err:
        imaging.sniff_format(b"", "a.png")
    assert err.value.reason == "empty" and "a.png" in str(err.value)


def test_decode_round_trips_lossless_formats():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(imaging.decode_scan(_png(rgb), "a.png"), rgb)
    np.testing.assert_array_equal(imaging.decode_scan(_tiff(rgb), "a.tif"), rgb)
    gray16 = np.array([[0, 1000], [2000, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(imaging.decode_scan(_tiff(gray16), "a.tif"), gray16)
    jpeg = imaging.decode_scan(_jpeg(np.full((8, 8), 100, np.uint8)), "a.jpg")
    assert jpeg.shape == (8, 8) and abs(int(jpeg.mean()) - 100) <= 1


@pytest.mark.parametrize("data, name, reason", [
    (b"", "e.png", "empty"),
    (b"just text", "notes.txt", "unsupported"),
    (b"II*\x00" + b"\x07" * 64, "bad.tif", "undecodable"),
])
def test_decode_errors_have_reasons(data, name, reason):
    with pytest.raises(DecodeError) as err:
        imaging.decode_scan(data, name)
    assert err.value.reason == reason and name in str(err.value)


def test_truncated_jpeg_is_an_error():
    rng = np.random.default_rng(0)
    data = _jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(DecodeError) as err:
        imaging.decode_scan(data[: len(data) // 2], "t.jpg")
    assert err.value.reason in ("truncated", "undecodable")


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 50], [100, 200]], np.int16), np.array([[0, 64], [128, 255]], np.uint8)),
    (np.array([[-10.0, 10.0]]), np.array([[0, 255]], np.uint8)),
    (np.full((2, 2), 7, np.int16), np.zeros((2, 2), np.uint8)),
    (np.array([[True, False]]), np.array([[255, 0]], np.uint8)),
])
def test_to_uint8_table(values, expected):
    np.testing.assert_array_equal(imaging.to_uint8(values), expected)


def test_resize_mask_nearest_and_binary():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    np.testing.assert_array_equal(imaging.resize_mask(mask, 2), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="positive number of pixels, got 0"):
        imaging.resize_mask(mask, 0)


def test_resize_image_and_png_round_trip():
    image = np.full((10, 20, 3), 77, np.uint8)
    small = imaging.resize_image(image, 8)
    assert small.shape == (8, 8, 3) and (small == 77).all()
    np.testing.assert_array_equal(imaging.decode_png(imaging.encode_png(small)), small)
    with pytest.raises(ValueError, match="expects uint8"):
        imaging.resize_image(image.astype(np.float32), 8)
    with pytest.raises(ValueError, match="encode_png expects uint8"):
        imaging.encode_png(np.zeros((2, 2), np.float32))


def test_decode_error_rejects_unknown_reason():
    with pytest.raises(ValueError, match="reason must be one of"):
        DecodeError("weird", "x")
