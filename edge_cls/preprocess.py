"""The preprocessing spec every artifact carries, and the one implementation of it.

A :class:`PreprocessSpec` is derived once from a timm model's data config (``pretrained_cfg``
resolved by ``timm.data.resolve_data_config``), stored in every artifact, and applied here for
every backend. The geometry reproduces timm's eval transform (``transforms_imagenet_eval``) step
by step on PIL images, so a tensor made here matches timm's to float rounding.

Only numpy and pillow are imported: this module runs on the device.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, InvalidImageError

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
}
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DEFAULT_CROP_PCT = 0.875  # timm's default when a config gives none


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor.

    Attributes:
        input_size: (height, width) of the model input.
        crop_pct: fraction of the resized image kept by the crop (timm's ``crop_pct``).
        crop_mode: ``center`` (resize shorter side, center crop), ``squash`` (resize both
            sides, aspect not kept) or ``border`` (resize longer side, pad with the mean).
        interpolation: PIL resampling filter name (``bilinear``, ``bicubic``, ...).
        mean, std: per-channel normalisation, applied after scaling pixels to [0, 1].
        channel_order: ``RGB`` or ``BGR`` order of the model's input channels.
        layout: ``NCHW`` or ``NHWC`` layout of the model's input tensor.
    """

    input_size: tuple[int, int]
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    _mean_std: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ConfigError(f"input_size must be two positive integers (height, width), got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1.0):
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ConfigError(f"{name} must have 3 values (one per RGB channel), got {values!r}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"std values must be positive, got {self.std!r}")
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        object.__setattr__(self, "_mean_std", (mean, std))

    @classmethod
    def from_data_config(cls, config: Mapping[str, Any]) -> PreprocessSpec:
        """Build a spec from a timm data config (``timm.data.resolve_data_config`` output)."""
        try:
            channels, height, width = config["input_size"]
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"data config needs input_size as (channels, height, width), got {config!r}") from e
        if channels != 3:
            raise ConfigError(f"only 3-channel models are supported, the data config asks for {channels} channels")
        return cls(
            input_size=(int(height), int(width)),
            crop_pct=float(config.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=config.get("crop_mode") or "center",
            interpolation=config.get("interpolation") or "bilinear",
            mean=tuple(config.get("mean", cls.mean)),
            std=tuple(config.get("std", cls.std)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_mean_std")
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a preprocessing spec must be a mapping, got {type(data).__name__}")
        known = {"input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "channel_order", "layout"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing spec keys: {sorted(unknown)}")
        if "input_size" not in data:
            raise ConfigError("preprocessing spec has no input_size")
        values = dict(data)
        if not isinstance(values["input_size"], (list, tuple)):
            raise ConfigError(f"input_size must be a list of two integers, got {values['input_size']!r}")
        values["input_size"] = tuple(values["input_size"])
        return cls(**values)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image tensor shape, in the spec's layout."""
        h, w = self.input_size
        return (3, h, w) if self.layout == "NCHW" else (h, w, 3)

    def __call__(self, image: ImageInput) -> np.ndarray:
        """Load ``image`` and return one float32 tensor of :attr:`input_shape`."""
        return transform(load_image(image), self)


def load_image(source: ImageInput) -> Image.Image:
    """Open an image from a path, bytes, PIL image or HWC uint8 array, as an RGB PIL image.

    EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, ...) becomes RGB, with
    transparency composited over white. Raises :class:`InvalidImageError` naming the input.
    """
    if isinstance(source, Image.Image):
        image, name = source, f"PIL image ({source.mode}, {source.size[0]}x{source.size[1]})"
    elif isinstance(source, np.ndarray):
        return _array_to_image(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image, name = _open(io.BytesIO(bytes(source)), "image bytes"), "image bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise InvalidImageError(f"{path} {what}: pass the path of an image file")
        image, name = _open(path, str(path)), str(path)
    else:
        raise InvalidImageError(
            f"cannot read an image from a {type(source).__name__}: pass a path, bytes, a PIL image "
            "or an HxWx3 uint8 numpy array"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidImageError(f"{name} could not be decoded ({e}): the file is truncated or corrupt") from e


def _open(fp: Any, name: str) -> Image.Image:
    try:
        return Image.open(fp)
    except UnidentifiedImageError as e:
        raise InvalidImageError(
            f"{name} is not an image format Pillow can read: pass a JPEG, PNG, BMP, WebP or TIFF"
        ) from e
    except (OSError, Image.DecompressionBombError) as e:
        raise InvalidImageError(f"{name} could not be opened ({e})") from e


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InvalidImageError(
            f"numpy image has dtype {array.dtype}; pass uint8 pixels in 0..255 (e.g. (x * 255).astype(np.uint8))"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    raise InvalidImageError(
        f"numpy image has shape {array.shape}; pass HxW (grey) or HxWxC with C in 1, 3 (RGB), 4 (RGBA)"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: scale 0..65535 to 0..255. Pillow's own convert clips instead.
        pixels = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def transform(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize, crop and normalise an RGB PIL image as timm's eval transform does."""
    height, width = spec.input_size
    resample = INTERPOLATIONS[spec.interpolation]
    scale_h = math.floor(height / spec.crop_pct)
    scale_w = math.floor(width / spec.crop_pct)
    fill: tuple[int, ...] = (0, 0, 0)
    if spec.crop_mode == "squash":
        image = _resize(image, (scale_h, scale_w), resample)
    elif spec.crop_mode == "border":
        image = _resize(image, _keep_ratio_size(image, (scale_h, scale_w), longest=1.0), resample)
        fill = tuple(round(255 * v) for v in spec.mean)
    elif scale_h == scale_w:
        image = _resize(image, _shorter_side_size(image, scale_h), resample)
    else:
        image = _resize(image, _keep_ratio_size(image, (scale_h, scale_w), longest=0.0), resample)
    image = _center_crop_or_pad(image, (height, width), fill)

    pixels = np.asarray(image, dtype=np.uint8)
    chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean, std = spec._mean_std
    chw = (chw - mean) / std
    if spec.channel_order == "BGR":
        chw = chw[::-1]
    if spec.layout == "NHWC":
        chw = chw.transpose(1, 2, 0)
    return np.ascontiguousarray(chw, dtype=np.float32)


def preprocess_batch(images: Sequence[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Load and transform several images into one float32 batch."""
    if len(images) == 0:
        raise InvalidImageError("no images given: pass at least one image")
    return np.stack([spec(image) for image in images])


def _resize(image: Image.Image, size_hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    h, w = size_hw
    if image.size == (w, h):
        return image
    return image.resize((w, h), resample)


def _shorter_side_size(image: Image.Image, short_target: int) -> tuple[int, int]:
    # torchvision's Resize(int) rule: shorter side to the target, longer side truncated.
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_target * long / short)
    return (new_long, short_target) if w <= h else (short_target, new_long)


def _keep_ratio_size(image: Image.Image, target_hw: tuple[int, int], longest: float) -> tuple[int, int]:
    # timm's ResizeKeepRatio without its random scale/aspect terms.
    w, h = image.size
    ratio_h, ratio_w = h / target_hw[0], w / target_hw[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h * 1.0 / ratio), round(w * 1.0 / ratio)


def _center_crop_or_pad(image: Image.Image, size_hw: tuple[int, int], fill: tuple[int, ...]) -> Image.Image:
    crop_h, crop_w = size_hw
    w, h = image.size
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        padded = Image.new("RGB", (w + max(crop_w - w, 0), h + max(crop_h - h, 0)), fill)
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
        if (w, h) == (crop_w, crop_h):
            return image
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))
