"""Where preprocessing runs: the placement record, and the host's uint8 pixels for a graph that
normalises them (the same pixels the float path normalises, for files, arrays and BGR frames)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ConfigError
from edge_cls.preprocess import Frame, PreprocessSpec
from edge_cls.preprocess.placement import HOST_EXACT, Placement, crop_pixels, pixels, preprocessor

SPEC = PreprocessSpec(input_size=(64, 64), crop_pct=0.875, interpolation="bicubic")


def photo(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(width * height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([127 + 90 * np.sin(2 * np.pi * (x / width * (c + 1) + y / height)) for c in range(3)], axis=-1)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def normalised(spec: PreprocessSpec, u8: np.ndarray) -> np.ndarray:
    return np.stack([spec._lut[c][u8[:, :, c]] for c in range(3)])


@pytest.mark.parametrize("resize", ["exact", "box", "fast"])
@pytest.mark.parametrize("spec", [SPEC, PreprocessSpec(input_size=(48, 64), crop_mode="border", crop_pct=1.0)])
def test_uint8_pixels_are_what_the_float_path_normalises(resize, spec):
    for image in (jpeg(photo(640, 480)), photo(97, 300)):
        u8 = pixels(spec, image, resize=resize)
        assert u8.dtype == np.uint8 and u8.shape == (*spec.input_size, 3)
        np.testing.assert_array_equal(normalised(spec, u8), spec(image, resize=resize))


def test_a_bgr_frame_gives_the_pixels_of_its_rgb_array():
    rgb = photo(320, 240)
    frame = Frame(np.ascontiguousarray(rgb[:, :, ::-1]), "BGR")
    np.testing.assert_array_equal(pixels(SPEC, frame), pixels(SPEC, rgb))
    np.testing.assert_array_equal(crop_pixels(SPEC, frame), crop_pixels(SPEC, rgb))


def test_crop_pixels_are_the_centre_crop_at_the_sources_scale():
    rgb = photo(640, 480)
    crop = crop_pixels(SPEC, rgb)
    # timm resizes 640x480 to 97x73 (long side truncated) and keeps the centre 64x64: of the source,
    # 64 * 640 / 97 by 64 * 480 / 73 pixels, from (16, 4) of 97x73
    side, width = round(64 * 480 / 73), round(64 * 640 / 97)
    top, left = round(4 * 480 / 73), round(16 * 640 / 97)
    # over 4x the model's 64 px a side: reduced on the host (2x2 boxes) before a graph resizes it in float
    assert crop.shape == (-(-side // 2), -(-width // 2), 3)  # Pillow keeps the partial last box
    expected = Image.fromarray(rgb).crop((left, top, left + width, top + side)).reduce(2)
    np.testing.assert_array_equal(crop, np.asarray(expected))
    spec = PreprocessSpec(input_size=(224, 224), crop_pct=0.875)  # 420 px: under 4x 224, kept at full scale
    assert crop_pixels(spec, rgb).shape[:2] == (round(224 * 480 / 256),) * 2


def test_preprocessor_follows_the_placement():
    rgb = photo(200, 150)
    assert preprocessor(SPEC, HOST_EXACT)(rgb).dtype == np.float32
    np.testing.assert_array_equal(preprocessor(SPEC, Placement(host_resize="box"))(rgb), SPEC(rgb, resize="box"))
    assert preprocessor(SPEC, Placement(graph_input="uint8"))(rgb).dtype == np.uint8
    side = round(64 * 150 / 73)  # the short side's centre crop at the source's scale
    assert preprocessor(SPEC, Placement(graph_input="uint8", graph_resize="cubic"))(rgb).shape == (side, side, 3)


def test_placement_round_trips_and_says_where_each_step_runs():
    placement = Placement(graph_input="uint8", graph_resize="bicubic-pillow")
    assert Placement.from_dict(placement.to_dict()) == placement
    assert placement.steps() == {"decode": "host", "crop": "host", "resize": "graph", "layout": "graph",
                                 "normalise": "graph"}
    assert placement.input_shape((3, 64, 64), (64, 64)) == [-1, -1, -1, 3]
    assert Placement(graph_input="uint8").input_shape((3, 64, 64), (64, 64)) == [-1, 64, 64, 3]
    assert HOST_EXACT.input_shape((3, 64, 64), (64, 64)) == [-1, 3, 64, 64] and HOST_EXACT.input_dtype == "float32"


@pytest.mark.parametrize("values", [{"graph_input": "float16"}, {"host_resize": "lanczos"},
                                    {"graph_resize": "cubic"}, {"graph_input": "uint8", "graph_resize": "area"},
                                    {"where": "graph"}])
def test_bad_placements_are_config_errors(values):
    with pytest.raises(ConfigError):
        Placement.from_dict(values)


def test_steps_that_do_not_follow_from_the_settings_are_refused():
    data = Placement(graph_input="uint8").to_dict()
    data["steps"]["resize"] = "graph"
    with pytest.raises(ConfigError, match="do not follow"):
        Placement.from_dict(data)
