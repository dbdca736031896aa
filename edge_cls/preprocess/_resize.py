"""Geometry and resampling of the image path: timm's resize and center crop as a plan of regions,
then the exact resample (Pillow's pixels, to the last bit) or the box resample (one call).

The exact resample gives the pixels of timm's eval transform: Pillow's resize of the whole image,
then the crop. For a long strip timm's resize is up to the aspect ratio times the crop, so there
Pillow's two passes run as two calls with the crop between them; they must run in the order
Pillow runs them, since the image is rounded to 8 bits between the passes.

Not a ``box=`` resize for the exact path: Pillow rounds the box to float32, which moves a few
filter weights and changes about 0.5% of the pixels by one level (0.017 after normalisation).

Only numpy and pillow: this runs on the device. Internal to :mod:`edge_cls.preprocess`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import PIL
from PIL import Image

from edge_cls.errors import InvalidImageError

if TYPE_CHECKING:
    from edge_cls.preprocess import PreprocessSpec

WHOLE_RESIZE_LIMIT = 4  # the exact path resizes the whole image while that is at most 4x the crop
EXACT_PASS_PIXELS = 16_000_000  # the largest first resampling pass the exact path runs (64 MB)
EXACT_RESIZED_SIDE = 65_536  # Pillow holds ~48 bytes of filter weights per pixel of a resized side
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


class Axis(NamedTuple):
    """One axis of a plan: keep [start, stop) of the resized image, write it at ``offset``."""

    start: int
    stop: int
    offset: int


class Plan(NamedTuple):
    resized: tuple[int, int]  # (width, height) timm resizes the whole image to
    x: Axis
    y: Axis
    fill: tuple[int, int, int] | None  # RGB padding where the crop is larger than the image


def plan(size: tuple[int, int], spec: PreprocessSpec, name: str) -> Plan:
    """timm's resize and crop of a ``size`` image, as the region of the resized image to keep."""
    resized = resized_size(size, spec)
    if min(resized) < 1:
        raise InvalidImageError(
            f"{name} is {size[0]}x{size[1]}: its short side would be under one pixel after the resize "
            f"to {spec.input_size[1]}x{spec.input_size[0]} ({spec.crop_mode}); crop it to the region to classify"
        )
    height, width = spec.input_size
    x, y = _crop_axis(resized[0], width), _crop_axis(resized[1], height)
    pads = x.offset or y.offset or x.stop - x.start < width or y.stop - y.start < height
    fill = None
    if pads:
        fill = tuple(round(255 * v) for v in spec.mean) if spec.crop_mode == "border" else (0, 0, 0)
    return Plan(resized, x, y, fill)


def resized_size(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """(width, height) of timm's resize of a ``size`` image, before its center crop."""
    height, width = spec.input_size
    scale_h = math.floor(height / spec.crop_pct)
    scale_w = math.floor(width / spec.crop_pct)
    w, h = size
    if spec.crop_mode == "squash":
        return scale_w, scale_h
    if spec.crop_mode == "center" and scale_h == scale_w:
        # torchvision's Resize(int) rule: shorter side to the target, longer side truncated.
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(scale_h * long / short)
        return (scale_h, new_long) if w <= h else (new_long, scale_h)
    # timm's ResizeKeepRatio without its random terms: longest side fits (border) or shortest does.
    longest = 1.0 if spec.crop_mode == "border" else 0.0
    ratio_h, ratio_w = h / scale_h, w / scale_w
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(w * 1.0 / ratio), round(h * 1.0 / ratio)


def _crop_axis(resized: int, crop: int) -> Axis:
    # torchvision's center_crop: pad to the crop (left part (crop - size) // 2), then crop at
    # int(round((size - crop) / 2)).
    if crop >= resized:
        return Axis(0, resized, (crop - resized) // 2)
    start = int(round((resized - crop) / 2.0))
    return Axis(start, start + crop, 0)


def resample_exact(image: Image.Image, plan: Plan, resample: Image.Resampling) -> Image.Image:
    """The plan's region of timm's resize of ``image``, pixel for pixel.

    Beyond what the default limits let through (a first pass over EXACT_PASS_PIXELS, or a resized
    side over EXACT_RESIZED_SIDE), the crop's box is resized directly instead: a level or so from
    exact, and memory stays bounded whatever limits the caller raised.
    """
    (width, height), (x, y), size = plan.resized, (plan.x, plan.y), image.size
    if size != (width, height):
        vertical_first = _pillow_resizes_vertically_first(size, (width, height))
        first_pass = size[0] * height if vertical_first else width * size[1]
        if first_pass > EXACT_PASS_PIXELS or max(width, height) > EXACT_RESIZED_SIDE:
            return resample_box(image, (0.0, 0.0, float(size[0]), float(size[1])), plan, resample, None)
        if width * height <= WHOLE_RESIZE_LIMIT * (x.stop - x.start) * (y.stop - y.start):
            image = image.resize((width, height), resample)
        elif vertical_first:
            image = image.resize((size[0], height), resample).crop((0, y.start, size[0], y.stop))
            return image.resize((width, y.stop - y.start), resample).crop((x.start, 0, x.stop, y.stop - y.start))
        else:
            image = image.resize((width, size[1]), resample).crop((x.start, 0, x.stop, size[1]))
            return image.resize((x.stop - x.start, height), resample).crop((0, y.start, x.stop - x.start, y.stop))
    box = (x.start, y.start, x.stop, y.stop)
    return image if box == (0, 0, width, height) else image.crop(box)


def _pillow_resizes_vertically_first(source: tuple[int, int], target: tuple[int, int]) -> bool:
    # Pillow 13's Resample.c runs the vertical pass first when the height shrinks by more than
    # twice as many pixels as the width; earlier versions always run the horizontal pass first.
    # tests/test_preprocess_exact.py checks the two-call resize against timm on many shapes.
    shrink_h, shrink_w = source[1] - target[1], source[0] - target[0]
    return _PILLOW_MAJOR >= 13 and shrink_h > 0 and shrink_h > 2 * shrink_w


def resample_box(
    image: Image.Image,
    content: tuple[float, float, float, float],
    plan: Plan,
    resample: Image.Resampling,
    reducing_gap: float | None,
) -> Image.Image:
    """The plan's region of the source (the box ``content`` of ``image``) resized straight to its
    output size in one call: no intermediate image, a level or so from exact."""
    (x, y), (x0, y0, x1, y1) = (plan.x, plan.y), content
    sx = (x1 - x0) / plan.resized[0]  # image pixels per resized pixel
    sy = (y1 - y0) / plan.resized[1]
    box = (
        max(0.0, x0 + x.start * sx),
        max(0.0, y0 + y.start * sy),
        min(float(image.size[0]), x0 + x.stop * sx),
        min(float(image.size[1]), y0 + y.stop * sy),
    )
    return image.resize((x.stop - x.start, y.stop - y.start), resample, box=box, reducing_gap=reducing_gap)
