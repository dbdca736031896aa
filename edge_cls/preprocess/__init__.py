"""The preprocessing spec every artifact carries, and the one implementation of it.

A :class:`PreprocessSpec` is derived once from a timm model's data config (``pretrained_cfg``
resolved by ``timm.data.resolve_data_config``), stored in every artifact, and applied here for
every backend. Two paths turn an image into the model's tensor:

* the exact path (the default) reproduces timm's eval transform (``transforms_imagenet_eval``),
  so a tensor made here matches timm's to float rounding. For a long strip, whose resize timm
  makes many times the crop, Pillow's two resampling passes run as two calls with the crop
  between them: the same pixels, without computing what the crop drops;
* the fast path (``fast=True``) decodes large JPEGs at 1/2, 1/4 or 1/8 scale (``Image.draft``)
  and resizes the crop's box of the source straight to the output in one call (``box=``,
  ``reducing_gap``). Its tensors differ from the exact ones by a few 8-bit levels on some
  pixels; ``benchmarks/results/image_path.md`` gives its top-1 agreement and speed.

Both write the normalised pixels straight into a float32 buffer (``out=``; one row of a batch in
:func:`preprocess_batch`) through a per-channel lookup table that gives exactly what
``(x / 255 - mean) / std`` gives in float32. Camera frames come as :class:`Frame` with their
channel order (OpenCV's BGR); plain arrays are read as RGB.

Every image is checked from its header before its pixels are decoded (the limits are keywords
of the public functions; the module-level defaults, read at call time, apply otherwise):

* at most :data:`DEFAULT_MAX_PIXELS` pixels (16 MP). At the cap, one image adds at most ~145 MB
  (measured, tests/test_preprocess_limits.py), so a process with a 224-px ONNX Runtime model
  (~120 MB) stays under 300 MB;
* an aspect ratio of at most :data:`DEFAULT_MAX_ASPECT_RATIO` (100:1), and at least one pixel
  per side after the resize: a thinner strip carries no picture a model could use.

Any failure on one image raises :class:`InvalidImageError` naming it. Pillow's global state is
left alone: its decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, 89 MP) still prints its
warning for a file that large, and the header check here then refuses it.

A third resize, ``resize="box"``, is the fast path's one-call resize without its reduced decode
and reducing gap. Where an artifact runs these steps (on the host in float32, or in the model graph
on uint8 pixels) is its :class:`~edge_cls.preprocess.placement.Placement`, which also makes the
host's uint8 pixels.

Only numpy and pillow are imported (and simplejpeg, when installed, for JPEGs: the same pixels,
:mod:`edge_cls.preprocess._jpeg`): this module runs on the device. The functions keep no state
between calls and are safe to call from several threads at once (a PIL image that is not yet
loaded should not be shared between threads: Pillow loads it lazily). Decoding lives in
``_decode``, geometry and resampling in ``_resize``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from edge_cls.errors import ConfigError, InvalidImageError
from edge_cls.preprocess._decode import Decoded, Limits, decode, decode_array
from edge_cls.preprocess._resize import Plan, plan, resample_box, resample_exact

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

#: Largest image accepted, in pixels (width x height), when a call gives no ``max_pixels``: 16 MP
#: takes a 4608x3456 camera photo. Pillow holds 4 bytes a pixel, and a conversion or an EXIF
#: rotation briefly holds two copies: up to ~145 MB at the cap, which keeps a process that also
#: runs a 224-px ONNX Runtime model (~120 MB) under 300 MB. Assign it to change the default.
DEFAULT_MAX_PIXELS = 16_000_000
#: Longest side over shortest side beyond which an image is refused (panoramas reach ~12:1).
DEFAULT_MAX_ASPECT_RATIO = 100.0
#: Whether the public functions take the fast path when a call does not say. False: the fast path
#: did not reach 99.9% top-1 agreement with the exact one (see FAST_REDUCING_GAP).
FAST_BY_DEFAULT = False
#: The fast path decodes a JPEG at 1/2, 1/4 or 1/8 scale only while that keeps this many times
#: the pixels the resize needs (per side; ``math.inf``: never)...
FAST_DRAFT_MARGIN = 4.0
#: ...and gives Pillow's resize this ``reducing_gap`` (a box-filter reduction by an integer factor
#: first, as long as this many times the output size remains for the real filter; None: never).
#: 4 and 4 agreed best with the exact path of the variants measured, but not enough to be the
#: default: top-1 675/676 real photos (99.85%) on EfficientNet-Lite1, under the 99.9% bar; 3.5x
#: faster than exact on a 4000x3000 JPEG, 2.5x on a 640x480 one (benchmarks/results/image_path.md).
FAST_REDUCING_GAP = 4.0

MAX_INPUT_SIDE = 4096  # a model input side beyond this is a corrupt spec, not a model
MIN_CROP_PCT = 0.1  # timm's models use 0.875..1; far below it the resize target is meaningless


@dataclass(frozen=True)
class Frame:
    """A camera frame: uint8 pixels (HxW, HxWx3 or HxWx4) with their channel order.

    OpenCV gives ``BGR`` frames: ``spec(Frame(frame, "BGR"))`` reads them right without a copy
    to swap the channels (the swap happens in the normalisation). A plain array is read as RGB.
    """

    pixels: np.ndarray
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"Frame channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")


ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Frame


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
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(v, int) and 0 < v <= MAX_INPUT_SIDE for v in size):
            raise ConfigError(
                f"input_size must be two integers in 1..{MAX_INPUT_SIDE} (height, width), got {self.input_size!r}"
            )
        object.__setattr__(self, "input_size", size)
        if not (isinstance(self.crop_pct, (int, float)) and MIN_CROP_PCT <= self.crop_pct <= 1.0):
            raise ConfigError(f"crop_pct must be in [{MIN_CROP_PCT}, 1], got {self.crop_pct!r}")
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
        # (v / 255 - mean) / std for every 8-bit v, in float32 with the same operations (and so
        # the same rounding) as normalising a float32 tensor: a lookup replaces three passes.
        levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        lut = (levels - mean) / std
        lut.flags.writeable = False
        object.__setattr__(self, "_lut", lut)

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
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
        }

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

    def __call__(self, image: ImageInput, *, fast: bool | None = None, out: np.ndarray | None = None,
                 max_pixels: int | None = None, max_aspect_ratio: float | None = None,
                 resize: str | None = None) -> np.ndarray:
        """Load ``image`` and return one float32 tensor of :attr:`input_shape`.

        ``fast`` picks the path (default :data:`FAST_BY_DEFAULT`); ``resize`` names it instead
        (``exact``, ``box``: the fast path's one-call resize without its reduced decode and reducing
        gap, ``fast``); ``out`` is an optional float32 array of :attr:`input_shape` to write into
        (and return); ``max_pixels`` and ``max_aspect_ratio`` override the module's limits for this call.
        """
        resize = resize_mode(fast, resize)
        decoded = _decode(image, _limits(max_pixels, max_aspect_ratio), draft_for=self if resize == "fast" else None)
        return _render(decoded, self, _output(out, self), resize=resize)


def load_image(
    source: ImageInput, *, max_pixels: int | None = None, max_aspect_ratio: float | None = None
) -> Image.Image:
    """Open an image from a path, bytes, PIL image, uint8 array or :class:`Frame`, as an RGB PIL image.

    EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, F, ...) becomes RGB, with
    transparency composited over white. 16-bit grey scales 0..65535 to 0..255; float grey whose
    finite values all lie in [0, 1] scales by 255, other float grey is read as 0..255 and clipped
    (NaN reads as 0). The size limits are checked from the header, before decoding. Raises
    :class:`InvalidImageError` naming the input.
    """
    decoded = _decode(source, _limits(max_pixels, max_aspect_ratio), draft_for=None)
    if decoded.bgr:
        return Image.merge("RGB", decoded.image.split()[:3][::-1])
    return decoded.image if decoded.image.mode == "RGB" else decoded.image.convert("RGB")  # RGBX: a fast decode


def transform(
    image: Image.Image,
    spec: PreprocessSpec,
    *,
    fast: bool | None = None,
    out: np.ndarray | None = None,
    max_aspect_ratio: float | None = None,
) -> np.ndarray:
    """Resize, crop and normalise a PIL image (RGB, or any mode :func:`load_image` reads; its EXIF
    orientation is applied) as timm's eval transform does, or by the fast path's box resize."""
    limits = _limits(None, max_aspect_ratio, cap_pixels=False)
    decoded = _decode(image, limits, draft_for=None)
    return _render(decoded, spec, _output(out, spec), resize=resize_mode(fast, None))


def preprocess_batch(
    images: Sequence[ImageInput],
    spec: PreprocessSpec,
    *,
    fast: bool | None = None,
    out: np.ndarray | None = None,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = None,
) -> np.ndarray:
    """Load and transform several images into one float32 (N, *spec.input_shape) batch.

    Each image is written straight into its row of ``out`` (allocated when not given, or a
    preallocated array to reuse between batches). The first unreadable image raises
    :class:`InvalidImageError`.
    """
    if len(images) == 0:
        raise InvalidImageError("no images given: pass at least one image")
    shape = (len(images), *spec.input_shape)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.writeable:
        raise ConfigError(f"out must be a writeable float32 array of shape {shape}, got {out.dtype} {out.shape}")
    for row, image in zip(out, images):
        spec(image, fast=fast, out=row, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    return out


def _output(out: np.ndarray | None, spec: PreprocessSpec) -> np.ndarray:
    if out is None:
        return np.empty(spec.input_shape, dtype=np.float32)
    if out.shape != spec.input_shape or out.dtype != np.float32 or not out.flags.writeable:
        raise ConfigError(
            f"out must be a writeable float32 array of shape {spec.input_shape}, got {out.dtype} {out.shape}"
        )
    return out


def _limits(max_pixels: int | None, max_aspect_ratio: float | None, *, cap_pixels: bool = True) -> Limits:
    # The module defaults are read here, at call time, so assigning them changes every later call.
    pixels = (DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels) if cap_pixels else None
    ratio = DEFAULT_MAX_ASPECT_RATIO if max_aspect_ratio is None else max_aspect_ratio
    if pixels is not None and not (isinstance(pixels, int) and pixels > 0):
        raise ConfigError(f"max_pixels must be a positive integer, got {pixels!r}")
    if not (isinstance(ratio, (int, float)) and ratio >= 1):
        raise ConfigError(f"max_aspect_ratio must be a number >= 1, got {ratio!r}")
    return Limits(pixels, float(ratio))


def _decode(source: ImageInput, limits: Limits, draft_for: PreprocessSpec | None) -> Decoded:
    if isinstance(source, Frame):
        return decode_array(source.pixels, limits, bgr=source.channel_order == "BGR")
    return decode(source, limits, draft_for, FAST_DRAFT_MARGIN)


RESIZE_MODES = ("exact", "box", "fast")


def resize_mode(fast: bool | None, resize: str | None) -> str:
    """The resize a call asks for: ``resize`` by name, else ``fast`` (default :data:`FAST_BY_DEFAULT`)."""
    if resize is None:
        return "fast" if (FAST_BY_DEFAULT if fast is None else fast) else "exact"
    if resize not in RESIZE_MODES or fast is not None:
        raise ConfigError(f"resize must be one of {RESIZE_MODES} (and fast not given), got {resize!r}")
    return resize


def _render(decoded: Decoded, spec: PreprocessSpec, out: np.ndarray, *, resize: str) -> np.ndarray:
    pixels, region_plan = resized_region(decoded, spec, resize)
    _normalise_into(out, pixels, region_plan, spec, bgr=decoded.bgr)
    return out


def resized_region(decoded: Decoded, spec: PreprocessSpec, resize: str) -> tuple[np.ndarray, Plan]:
    """The crop's pixels at the model's scale (uint8, the decoded image's channels) and the plan
    that places them in the input."""
    region_plan = plan(decoded.size, spec, decoded.name)
    resample = INTERPOLATIONS[spec.interpolation]
    try:
        if resize == "exact":
            region = resample_exact(decoded.image, region_plan, resample)
        else:
            gap = FAST_REDUCING_GAP if resize == "fast" else None
            region = resample_box(decoded.image, decoded.content, region_plan, resample, gap)
        return np.asarray(region), region_plan
    except Exception as e:  # MemoryError above all; nothing here depends on the file's bytes
        raise InvalidImageError(f"{decoded.name} could not be resized ({type(e).__name__}: {e})") from e


def _normalise_into(out: np.ndarray, pixels: np.ndarray, region_plan: Plan, spec: PreprocessSpec, *, bgr: bool) -> None:
    """Write the region's pixels, normalised, at its place in ``out`` (and the fill around it)."""
    lut = spec._lut
    height, width = pixels.shape[:2]
    top, left = region_plan.y.offset, region_plan.x.offset
    nchw = spec.layout == "NCHW"
    for k, colour in enumerate(spec.channel_order):
        c = "RGB".index(colour)
        plane = out[k] if nchw else out[:, :, k]
        if region_plan.fill is not None:
            plane.fill(lut[c, region_plan.fill[c]])
        source = pixels[:, :, 2 - c if bgr else c]
        np.take(lut[c], source, out=plane[top:top + height, left:left + width], mode="clip")
