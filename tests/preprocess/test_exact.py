"""The exact path against timm's own eval transform on any shape, strips included: the two-call
resize must give the pixels of Pillow's whole resize, whichever pass Pillow runs first."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_cls.preprocess import CROP_MODES, INTERPOLATIONS, PreprocessSpec

timm = pytest.importorskip("timm", reason="the equality check compares with timm's transforms (train extra)")


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def timm_and_spec(input_hw, crop_pct, crop_mode, interpolation):
    cfg = {"input_size": (3, *input_hw), "interpolation": interpolation, "crop_pct": crop_pct,
           "crop_mode": crop_mode, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    return timm.data.create_transform(**cfg), PreprocessSpec.from_data_config(cfg)


@settings(max_examples=150, deadline=timedelta(seconds=2), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    long=st.integers(1, 700),
    short=st.integers(1, 60),
    tall=st.booleans(),
    input_hw=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    crop_pct=st.sampled_from([0.8, 0.875, 0.9, 0.95, 1.0]),
    crop_mode=st.sampled_from(CROP_MODES),
    interpolation=st.sampled_from(list(INTERPOLATIONS)),
    seed=st.integers(0, 1000),
)
def test_exact_path_equals_timm_on_any_shape(long, short, tall, input_hw, crop_pct, crop_mode, interpolation, seed):
    short = min(short, long)
    width, height = (short, long) if tall else (long, short)
    reference, spec = timm_and_spec(input_hw, crop_pct, crop_mode, interpolation)
    image = random_image(width, height, seed)
    try:
        expected = reference(image).numpy()
    except ValueError:  # timm's border resize to a zero-pixel side: ours refuses that image
        return
    got = spec(image, max_aspect_ratio=1e9)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("interpolation", list(INTERPOLATIONS))
@pytest.mark.parametrize("size", [(1200, 20), (20, 1200), (640, 480), (97, 61)])
def test_every_interpolation_equals_timm(interpolation, size):
    reference, spec = timm_and_spec((48, 48), 0.875, "center", interpolation)
    image = random_image(*size, seed=7)
    assert np.abs(spec(image) - reference(image).numpy()).max() <= 1e-5


def test_beyond_the_exact_limits_the_box_resize_is_within_a_level_or_two():
    # A 20000x1 strip for a 16-px model: timm's resize is 360000 pixels wide, over the longest
    # side the exact path resizes whole; it falls back to the crop's box, close to timm.
    reference, spec = timm_and_spec((16, 16), 0.875, "center", "bilinear")
    row = np.linspace(0, 255, 20000)[None, :, None].repeat(3, axis=2).astype(np.uint8)
    image = Image.fromarray(row, "RGB")
    level = 1 / 255 / 0.2  # one 8-bit level after normalisation by the smallest std
    assert np.abs(spec(image, max_aspect_ratio=1e9) - reference(image).numpy()).max() <= 2.01 * level
