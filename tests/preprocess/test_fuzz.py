"""Property tests of the image path: whatever comes in, a tensor of the spec's shape or an
InvalidImageError comes out (a ConfigError for a bad spec), quickly, on both paths."""

from __future__ import annotations

import io
import os
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from edge_cls.errors import ConfigError, InvalidImageError
from edge_cls.preprocess import CROP_MODES, INTERPOLATIONS, Frame, PreprocessSpec, load_image

# The suite runs 200 fixed examples per property; EDGE_CLS_FUZZ_EXAMPLES=5000 explores new ones.
EXAMPLES = int(os.environ.get("EDGE_CLS_FUZZ_EXAMPLES", "200"))
# Pillow warns about the corrupt files these tests make (truncated TIFF tags, huge headers).
pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(milliseconds=800),  # a slow example is a finding: images must stay bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 200,
    database=None,
)
SPEC = PreprocessSpec(input_size=(32, 32), crop_pct=0.875, interpolation="bicubic")
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA"]
MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "I;16L", "F"]


def tensor_or_invalid(source, spec: PreprocessSpec = SPEC, **kwargs) -> None:
    for fast in (False, True):
        try:
            tensor = spec(source, fast=fast, **kwargs)
        except InvalidImageError as e:
            assert str(e)  # a message that names the input
            continue
        assert tensor.dtype == np.float32 and tensor.shape == spec.input_shape
        assert np.isfinite(tensor).all()


WRITABLE = {"PNG": "L RGB RGBA P", "JPEG": "L RGB CMYK", "GIF": "L P RGB", "BMP": "L RGB P",
            "TIFF": "L RGB RGBA P CMYK", "WEBP": "RGB RGBA", "ICO": "RGB RGBA", "PPM": "L RGB", "TGA": "L RGB RGBA P"}


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in WRITABLE[fmt].split():
        image = image.convert("RGB")
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def small_images(draw) -> Image.Image:
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "CMYK"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def set_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR size of a PNG, with a valid CRC so the header parses."""
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


def set_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """The image's header with another width and height: the pixels that follow no longer fit."""
    if fmt == "PNG":
        return set_png_size(data, width, height)
    out = bytearray(data)
    if fmt == "BMP":
        out[18:26] = struct.pack("<ii", width, height if height < 2**31 else -1)
    elif fmt == "GIF":
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif fmt == "JPEG":
        at = data.find(b"\xff\xc0")
        if at > 0:
            out[at + 5:at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    return bytes(out)


DIMENSIONS = st.one_of(st.integers(0, 64), st.integers(0, 5000), st.sampled_from([2**16 - 1, 2**24, 2**31 - 1]))


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes(data):
    tensor_or_invalid(data)


@FUZZ
@given(small_images(), st.sampled_from(FORMATS), st.data())
def test_mutated_files(image, fmt, data):
    raw = bytearray(encode(image, fmt))
    for _ in range(data.draw(st.integers(0, 4))):  # flip a few bytes
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    tensor_or_invalid(bytes(raw[:cut]))


@FUZZ
@given(small_images(), st.sampled_from(["PNG", "BMP", "GIF", "JPEG"]), DIMENSIONS, DIMENSIONS)
def test_headers_with_any_size(image, fmt, width, height):
    tensor_or_invalid(set_size(encode(image, fmt), fmt, width, height))


@FUZZ
@given(hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.float32, np.float64, np.bool_, np.int64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
), st.sampled_from(["RGB", "BGR", None]))
def test_any_array(array, channel_order):
    tensor_or_invalid(array if channel_order is None else Frame(array, channel_order))


@FUZZ
@given(st.sampled_from(MODES), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**16), st.booleans())
def test_any_pil_mode(mode, width, height, seed, transparency):
    rng = np.random.default_rng(seed)
    image = Image.frombytes(mode, (width, height), rng.bytes(width * height * 8))
    if transparency and mode == "P":
        image.info["transparency"] = int(rng.integers(0, 256))
    tensor_or_invalid(image)
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (width, height)


@FUZZ
@given(st.binary(min_size=1, max_size=4096), st.sampled_from(["TIFF", "PNG"]))
def test_float_and_16_bit_files(values, fmt):
    pixels = np.frombuffer(values[: len(values) // 4 * 4] or b"\0\0\0\0", dtype=np.float32)
    image = Image.fromarray(pixels.reshape(1, -1) if fmt == "TIFF" else
                            (np.nan_to_num(pixels, nan=0, posinf=0, neginf=0) % 65536).astype(np.uint16).reshape(1, -1))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    tensor_or_invalid(buffer.getvalue(), max_aspect_ratio=1e9)


@FUZZ
@given(
    st.tuples(st.integers(-2, 300), st.integers(-2, 300)),
    st.one_of(st.floats(-1, 2), st.just(float("nan"))),
    st.sampled_from([*CROP_MODES, "zoom"]),
    st.sampled_from([*INTERPOLATIONS, "cubic"]),
    st.sampled_from(["RGB", "BGR", "GBR"]),
    st.sampled_from(["NCHW", "NHWC"]),
    st.tuples(st.integers(1, 300), st.integers(1, 300)),
)
def test_any_spec(input_size, crop_pct, crop_mode, interpolation, channel_order, layout, image_size):
    try:
        spec = PreprocessSpec(input_size=input_size, crop_pct=crop_pct, crop_mode=crop_mode,
                              interpolation=interpolation, channel_order=channel_order, layout=layout)
    except ConfigError:
        return
    image = Image.new("RGB", image_size, (10, 200, 30))
    tensor_or_invalid(image, spec)


@pytest.mark.parametrize("bad", [{"max_pixels": 0}, {"max_pixels": 1.5}, {"max_aspect_ratio": 0.5},
                                 {"max_aspect_ratio": "wide"}])
def test_bad_limits_are_config_errors(bad):
    with pytest.raises(ConfigError):
        SPEC(Image.new("RGB", (8, 8)), **bad)
