"""The one preprocessing implementation against timm's own eval transform, and image loading."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ConfigError, InvalidImageError
from edge_cls.preprocess import PreprocessSpec, load_image, preprocess_batch

timm = pytest.importorskip("timm", reason="the equality check compares with timm's transforms (train extra)")

MODELS = [
    "vit_base_patch16_224",  # bicubic, crop 0.9, mean 0.5
    "deit_tiny_patch16_224",  # bicubic, crop 0.875, ImageNet mean
    "efficientnet_b0",  # bicubic, crop 0.875, test size differs
    "tf_efficientnet_lite0",  # bicubic, crop 0.875, mean 0.5
    "mobilenetv3_large_100",  # bilinear, crop 0.875
    "convnext_tiny",  # bicubic, crop 0.95
    "vit_base_patch16_clip_224",  # CLIP mean/std
    "deit3_small_patch16_224",  # crop 1.0
]


def natural_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients, a few shapes and sensor-like noise: closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        base = 127 + 80 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
        channels.append(base)
    image = np.stack(channels, axis=-1)
    for _ in range(4):  # hard edges exercise the resampling filters
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, max(4, min(width, height) / 3))
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
        image[mask] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


SIZES = [(333, 517), (517, 333), (97, 61), (224, 224), (1023, 768), (40, 300)]


@pytest.mark.parametrize("name", MODELS)
def test_matches_timm_eval_transform(name):
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    reference = timm.data.create_transform(**cfg)
    spec = PreprocessSpec.from_data_config(cfg)
    for seed, (w, h) in enumerate(SIZES):
        image = natural_image(w, h, seed)
        expected = reference(image).numpy()
        got = spec(image)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, (name, w, h)


@pytest.mark.parametrize("crop_mode", ["squash", "border"])
@pytest.mark.parametrize("input_size", [(3, 224, 224), (3, 192, 256)])
def test_matches_timm_other_crop_modes_and_rectangles(crop_mode, input_size):
    cfg = {"input_size": input_size, "interpolation": "bilinear", "mean": (0.48, 0.45, 0.40),
           "std": (0.26, 0.26, 0.27), "crop_pct": 0.9, "crop_mode": crop_mode}
    reference = timm.data.create_transform(**cfg)
    spec = PreprocessSpec.from_data_config(cfg)
    for seed, (w, h) in enumerate(SIZES[:4]):
        image = natural_image(w, h, seed)
        assert np.abs(spec(image) - reference(image).numpy()).max() <= 1e-5, (crop_mode, w, h)


def test_center_rectangle_matches_timm():
    cfg = {
        "input_size": (3, 160, 224),
        "interpolation": "bicubic",
        "crop_pct": 0.95,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }
    reference = timm.data.create_transform(**cfg)
    spec = PreprocessSpec.from_data_config(cfg)
    image = natural_image(301, 207, 3)
    assert np.abs(spec(image) - reference(image).numpy()).max() <= 1e-5


def test_spec_round_trips_through_dict():
    spec = PreprocessSpec(
        input_size=(64, 48), crop_pct=0.9, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "bad",
    [
        {"input_size": (0, 10)},
        {"input_size": (10, 10), "crop_pct": 1.5},
        {"input_size": (10, 10), "interpolation": "cubic"},
        {"input_size": (10, 10), "mean": (0.5, 0.5)},
        {"input_size": (10, 10), "std": (0.0, 1, 1)},
        {"input_size": (10, 10), "crop_mode": "zoom"},
        {"input_size": (10, 10), "layout": "CHW"},
    ],
)
def test_invalid_spec_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        PreprocessSpec(**bad)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown"):
        PreprocessSpec.from_dict({"input_size": [8, 8], "colour": "red"})


SPEC = PreprocessSpec(input_size=(32, 32), crop_pct=1.0)


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    image = natural_image(50, 40, 0)
    path = tmp_path / "a.png"
    image.save(path)
    expected = SPEC(image)
    for source in (path, str(path), path.read_bytes(), np.asarray(image)):
        np.testing.assert_array_equal(SPEC(source), expected)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1", "YCbCr"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    rgb = natural_image(30, 20, 1)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    else:
        image = rgb.convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (30, 20)
    if mode in ("L", "I;16"):  # 16-bit grey scales down to the same 8-bit grey, not clipped white
        np.testing.assert_array_equal(np.asarray(loaded)[..., 0], np.asarray(rgb.convert("L")))


def test_transparency_is_composited_over_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(image)).reshape(-1, 3).tolist() == [[255, 255, 255]] * 16


def test_exif_orientation_is_applied(tmp_path):
    image = natural_image(60, 30, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (30, 60)


def test_16_bit_png_file(tmp_path):
    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    loaded = np.asarray(load_image(path))[..., 0]
    np.testing.assert_array_equal(loaded, np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8))


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    buffer = io.BytesIO()
    natural_image(200, 200, 0).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[:600])
    with pytest.raises(InvalidImageError, match="cut.jpg"):
        load_image(path)


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.png", "does not exist"),
    (lambda p: p, "directory"),
    (lambda p: (p / "x.png").write_text("not an image") and p / "x.png", "not an image"),
])
def test_unreadable_paths(tmp_path, make, match):
    with pytest.raises(InvalidImageError, match=match):
        load_image(make(tmp_path))


@pytest.mark.parametrize(
    "array", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8), np.zeros(8, np.uint8)]
)
def test_bad_arrays(array):
    with pytest.raises(InvalidImageError):
        load_image(array)


def test_not_an_image_type():
    with pytest.raises(InvalidImageError, match="cannot read"):
        load_image(42)


def test_bgr_and_nhwc_layouts():
    image = natural_image(40, 40, 5)
    base = SPEC(image)
    bgr = PreprocessSpec(input_size=(32, 32), crop_pct=1.0, channel_order="BGR", layout="NHWC")(image)
    np.testing.assert_array_equal(bgr, base[::-1].transpose(1, 2, 0))


def test_preprocess_batch_stacks_and_rejects_empty():
    images = [natural_image(40, 30, i) for i in range(3)]
    assert preprocess_batch(images, SPEC).shape == (3, 3, 32, 32)
    with pytest.raises(InvalidImageError):
        preprocess_batch([], SPEC)
