"""The fast image path, camera frames with their channel order, and writing into given buffers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import edge_cls.preprocess as preprocess
from edge_cls.errors import ConfigError, InvalidImageError
from edge_cls.preprocess import Frame, PreprocessSpec, load_image, preprocess_batch, transform

SPEC = PreprocessSpec(input_size=(64, 64), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
LEVEL = 2 / 255  # one 8-bit level after this spec's normalisation


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth fields, discs and noise, like tests/test_preprocess.py's natural_image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [rng.uniform(0.5, 4) * x / width + rng.uniform(0.5, 4) * y / height for _ in range(3)]
    image = np.stack([127 + 80 * np.sin(2 * np.pi * wave) for wave in waves], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, min(width, height) / 3)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(333, 517), (640, 480), (97, 61), (2000, 40)])
def test_fast_path_is_close_to_the_exact_one(size):
    image = photo(*size)
    # Pillow's reducing_gap and the float32 box move pixels by a few levels: measured up to 6
    # levels, 0.35 on average, on these images.
    difference = np.abs(SPEC(image) - SPEC(image, fast=True))
    assert difference.max() <= 8 * LEVEL and difference.mean() <= 0.5 * LEVEL


STORED = photo(1603, 1205, seed=3)  # a JPEG 16x the model's 73-px resize
UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270}


@pytest.fixture
def eighth_scale(monkeypatch):
    """A draft margin that decodes STORED at 1/8 for SPEC (73-px resize, 2x margin): the largest
    reduction, with a partial last column (1603/8) and row (1205/8)."""
    monkeypatch.setattr(preprocess, "FAST_DRAFT_MARGIN", 2.0)


def test_fast_path_decodes_large_jpegs_at_reduced_scale(eighth_scale):
    decoded = preprocess._decode(jpeg(STORED), preprocess._limits(None, None), draft_for=SPEC)
    assert decoded.image.size == (201, 151) and decoded.size == (1603, 1205)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_keeps_the_picture_in_place_whatever_the_orientation(eighth_scale, orientation):
    # The file stores the picture turned by UNDO and asks (EXIF) to turn it back: upright, it is
    # STORED again, and the fast tensor must sit on the exact one. A partial last row or column of
    # the reduced decode put on the wrong side would shift the picture by up to 8 source pixels.
    stored = STORED if orientation == 1 else STORED.transpose(UNDO[orientation])
    data = jpeg(stored, orientation)
    assert load_image(data).size == STORED.size
    difference = np.abs(SPEC(data) - SPEC(data, fast=True))
    assert difference.mean() <= 0.5 * LEVEL, difference.mean() / LEVEL


def test_bgr_frames_read_as_their_rgb_twin():
    rgb = np.asarray(photo(120, 90))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for fast in (False, True):
        np.testing.assert_array_equal(SPEC(Frame(bgr, "BGR"), fast=fast), SPEC(rgb, fast=fast))
    np.testing.assert_array_equal(np.asarray(load_image(Frame(bgr, "BGR"))), rgb)
    # a plain array is RGB, so the same pixels give another tensor
    assert not np.array_equal(SPEC(bgr), SPEC(rgb))


def test_bgra_and_grey_frames():
    rgba = np.asarray(photo(50, 40).convert("RGBA")).copy()
    rgba[:10, :, 3] = 0
    bgra = np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(SPEC(Frame(bgra, "BGR")), SPEC(rgba))
    grey = np.asarray(photo(50, 40).convert("L"))
    np.testing.assert_array_equal(SPEC(Frame(grey, "BGR")), SPEC(grey))


def test_bgr_model_gets_bgr_channels_from_a_bgr_frame():
    bgr_spec = PreprocessSpec(input_size=(64, 64), channel_order="BGR", layout="NHWC")
    rgb = np.asarray(photo(80, 80))
    expected = PreprocessSpec(input_size=(64, 64))(rgb)[::-1].transpose(1, 2, 0)
    np.testing.assert_array_equal(bgr_spec(Frame(np.ascontiguousarray(rgb[:, :, ::-1]), "BGR")), expected)


def test_frame_checks_its_channel_order():
    with pytest.raises(ConfigError, match="channel_order"):
        Frame(np.zeros((4, 4, 3), np.uint8), "RGBA")


def test_out_buffers_are_written_and_returned():
    image = photo(100, 80)
    buffer = np.full(SPEC.input_shape, np.nan, np.float32)
    assert SPEC(image, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, SPEC(image))
    with pytest.raises(ConfigError, match="out"):
        SPEC(image, out=np.empty((3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="out"):
        SPEC(image, out=np.empty(SPEC.input_shape, np.float64))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("fast", [False, True])
def test_batch_rows_are_the_single_tensors(layout, fast):
    spec = PreprocessSpec(input_size=(48, 40), layout=layout, crop_mode="border")
    images = [photo(90, 70, i) for i in range(3)] + [np.asarray(photo(30, 60, 9))]
    batch = np.full((4, *spec.input_shape), np.nan, np.float32)
    assert preprocess_batch(images, spec, out=batch, fast=fast) is batch
    for row, image in zip(batch, images):
        np.testing.assert_array_equal(row, spec(image, fast=fast))
    with pytest.raises(ConfigError, match="out"):
        preprocess_batch(images, spec, out=np.empty((3, *spec.input_shape), np.float32))


def test_batch_names_the_bad_image():
    with pytest.raises(InvalidImageError, match="no pixels"):
        preprocess_batch([photo(20, 20), np.zeros((0, 3, 3), np.uint8)], SPEC)


def test_transform_is_the_spec_on_a_pil_image():
    image = photo(130, 90)
    np.testing.assert_array_equal(transform(image, SPEC), SPEC(image))
    np.testing.assert_array_equal(transform(image, SPEC, fast=True), SPEC(image, fast=True))
    np.testing.assert_array_equal(transform(image.convert("L"), SPEC), SPEC(image.convert("L")))


def test_fast_by_default_switch(monkeypatch):
    data = jpeg(STORED)
    exact, fast = SPEC(data, fast=False), SPEC(data, fast=True)
    assert not np.array_equal(exact, fast)
    monkeypatch.setattr(preprocess, "FAST_BY_DEFAULT", True)
    np.testing.assert_array_equal(SPEC(data), fast)
    monkeypatch.setattr(preprocess, "FAST_BY_DEFAULT", False)
    np.testing.assert_array_equal(SPEC(data), exact)


def test_a_pil_image_given_by_the_caller_is_not_changed():
    image = Image.open(io.BytesIO(jpeg(STORED, orientation=6)))  # opened, not loaded: draftable
    SPEC(image, fast=True)
    assert image.size == (1603, 1205)  # not reduced by a draft, not turned by its EXIF
    assert image.getexif().get(0x0112) == 6
