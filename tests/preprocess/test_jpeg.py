"""The optional simplejpeg decoder: Pillow's pixels bit for bit (full scale and the fast path's
reduced scales), turned upright by EXIF, and Pillow wherever simplejpeg does not apply."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import edge_cls.preprocess as preprocess
from edge_cls.preprocess import PreprocessSpec, _jpeg, load_image

pytest.importorskip("simplejpeg", reason="the fast decoder is optional: pip install 'edge-cls[fast]'")

SPEC = PreprocessSpec(input_size=(64, 64), interpolation="bicubic")


def photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [x / width * (c + 2) + y / height * (3 - c) for c in range(3)]
    image = np.stack([127 + 90 * np.sin(2 * np.pi * wave) for wave in waves], -1)
    return Image.fromarray(np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8))


def encoded(image: Image.Image, orientation: int = 1, **options) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes(), **options)
    return buffer.getvalue()


@pytest.fixture
def pillow_only(monkeypatch):
    def both(function):
        result = function()
        monkeypatch.setattr(_jpeg, "_AVAILABLE", False)
        try:
            return result, function()
        finally:
            monkeypatch.setattr(_jpeg, "_AVAILABLE", True)
    return both


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("size, subsampling", [((640, 480), 2), ((333, 517), 0), ((1603, 1205), 1)])
def test_same_tensors_with_and_without_simplejpeg(pillow_only, orientation, size, subsampling):
    data = encoded(photo(*size), orientation, subsampling=subsampling)
    for fast in (False, True):
        with_simplejpeg, pillow = pillow_only(lambda fast=fast: SPEC(data, fast=fast))
        np.testing.assert_array_equal(with_simplejpeg, pillow)
    decoded, pillow = pillow_only(lambda: np.asarray(load_image(data)))
    np.testing.assert_array_equal(decoded, pillow)


def test_simplejpeg_is_used_and_decodes_into_pillows_layout_without_a_copy(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded(photo(1600, 1200)))
    decoded = preprocess._decode(path, preprocess._limits(None, None), None)
    assert decoded.image.mode == "RGBX" and decoded.content == (0.0, 0.0, 1600.0, 1200.0)
    reduced = preprocess._decode(path, preprocess._limits(None, None), SPEC)
    assert reduced.image.size == (400, 300) and reduced.size == (1600, 1200)  # 1/4: still 4x the 73-px resize


def test_grey_cmyk_and_png_files(pillow_only):
    grey = encoded(photo(300, 200).convert("L"))
    cmyk = io.BytesIO()
    photo(300, 200).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    png = io.BytesIO()
    photo(300, 200).save(png, format="PNG")
    for data in (grey, cmyk.getvalue(), png.getvalue()):
        with_simplejpeg, pillow = pillow_only(lambda data=data: SPEC(data))
        np.testing.assert_array_equal(with_simplejpeg, pillow)


def test_a_truncated_jpeg_is_still_pillows_error(pillow_only):
    data = encoded(photo(400, 300))[:3000]
    with pytest.raises(preprocess.InvalidImageError, match="truncated or corrupt"):
        SPEC(data)
