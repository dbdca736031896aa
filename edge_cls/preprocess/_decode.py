"""Decoding of the image path: any input to an upright RGB PIL image, within the size limits.

The limits are checked from the header, before a pixel is decoded. Modes are converted with as
few full-size copies as possible (Pillow holds 4 bytes a pixel): alpha is pasted over a white
canvas instead of composited between two RGBA images, and 16-bit and float grey go to 8 bits a
strip of rows at a time. The fast path may ask a JPEG decoder for a reduced scale
(``Image.draft``); :class:`Decoded` then says where the source's picture lies in the result.

Only numpy and pillow: this runs on the device. Internal to :mod:`edge_cls.preprocess`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_cls.errors import InvalidImageError
from edge_cls.preprocess import _jpeg
from edge_cls.preprocess._resize import resized_size

if TYPE_CHECKING:
    from edge_cls.preprocess import PreprocessSpec

_ORIENTATIONS = {  # EXIF orientation -> the transpose that displays the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
# Which upright axes (x, y) run against the stored ones, per orientation.
_FLIPS = {2: (True, False), 3: (True, True), 4: (False, True), 6: (True, False), 7: (True, True), 8: (False, True)}
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_WIDE_GREY_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_STRIP_PIXELS = 1 << 20  # wide grey images are converted this many pixels at a time


class Limits(NamedTuple):
    """The size limits of one call; ``max_pixels`` None means no pixel cap."""

    max_pixels: int | None
    max_aspect_ratio: float

    def check(self, size: tuple[int, int], name: str) -> None:
        """Refuse an image from its size alone, before any pixel is decoded."""
        width, height = size
        if width < 1 or height < 1:
            raise InvalidImageError(f"{name} has no pixels ({width}x{height}): pass a non-empty image")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise InvalidImageError(
                f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
                f"{self.max_pixels / 1e6:g} megapixels: downscale it, or raise max_pixels"
            )
        ratio = max(width, height) / min(width, height)
        if ratio > self.max_aspect_ratio:
            raise InvalidImageError(
                f"{name} is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the limit of "
                f"{self.max_aspect_ratio:g}:1: crop it to the region to classify, or raise max_aspect_ratio"
            )


class Decoded(NamedTuple):
    """A decoded RGB image and where the source's picture lies in it.

    ``size`` is the source's upright size in pixels; ``content`` the box (x0, y0, x1, y1) in
    ``image``'s pixels that holds it, which differs from the whole image only after a JPEG was
    decoded at a reduced scale. ``bgr`` says the three channels are stored as B, G, R.
    """

    image: Image.Image
    name: str
    size: tuple[int, int]
    content: tuple[float, float, float, float]
    bgr: bool = False


def decode(source: Any, limits: Limits, draft_for: PreprocessSpec | None, draft_margin: float) -> Decoded:
    """Decode a path, bytes, PIL image or uint8 array. With ``draft_for``, a JPEG opened here may
    be decoded at a reduced scale that keeps ``draft_margin`` times what that spec's resize needs."""
    if isinstance(source, np.ndarray):
        return decode_array(source, limits, bgr=False)
    if isinstance(source, Image.Image):
        name = f"PIL image ({source.mode}, {source.size[0]}x{source.size[1]})"
        limits.check(source.size, name)
        return _finish_decode(source, name, limits, owned=False)
    draft = (draft_for, draft_margin) if draft_for is not None else None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_file(io.BytesIO(bytes(source)), "image bytes", limits, draft)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise InvalidImageError(f"{path} {what}: pass the path of an image file")
        with path.open("rb") as fp:
            return _decode_file(fp, str(path), limits, draft)
    raise InvalidImageError(
        f"cannot read an image from a {type(source).__name__}: pass a path, bytes, a PIL image, "
        "an HxWx3 uint8 numpy array or a Frame"
    )


def decode_array(array: np.ndarray, limits: Limits, *, bgr: bool) -> Decoded:
    """An HxW, HxWx1, HxWx3 or HxWx4 uint8 array; ``bgr``: its colour channels are B, G, R."""
    name = f"numpy image {array.dtype}{tuple(array.shape)}"
    if array.dtype != np.uint8:
        raise InvalidImageError(
            f"{name} has dtype {array.dtype}; pass uint8 pixels in 0..255 (e.g. (x * 255).astype(np.uint8))"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidImageError(
            f"{name} has shape {array.shape}; pass HxW (grey) or HxWxC with C in 1, 3 (RGB), 4 (RGBA)"
        )
    limits.check((array.shape[1], array.shape[0]), name)
    try:
        image = to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    except Exception as e:  # MemoryError above all
        raise InvalidImageError(f"{name} could not be converted ({type(e).__name__}: {e})") from e
    return Decoded(image, name, image.size, (0.0, 0.0, *map(float, image.size)), bgr and array.ndim == 3)


def _decode_file(fp: Any, name: str, limits: Limits, draft: tuple[PreprocessSpec, float] | None) -> Decoded:
    try:
        image = Image.open(fp)
    except UnidentifiedImageError as e:
        raise InvalidImageError(
            f"{name} is not an image format Pillow can read: pass a JPEG, PNG, BMP, WebP or TIFF"
        ) from e
    except Image.DecompressionBombError as e:
        raise InvalidImageError(f"{name} is refused by Pillow's decompression-bomb check ({e})") from e
    except Exception as e:  # a malformed header raises whatever the format's parser hits
        raise InvalidImageError(f"{name} could not be opened ({type(e).__name__}: {e})") from e
    limits.check(image.size, name)  # from the header: nothing is decoded yet
    fast = _jpeg.decode(image, fp, _draft_need(image, *draft) if draft is not None else None)
    if fast is not None:
        return _upright_fast(image, *fast, name)
    return _finish_decode(image, name, limits, owned=True, draft=draft)


def _upright_fast(header: Image.Image, decoded: Image.Image, scale: float, name: str) -> Decoded:
    """simplejpeg's RGBX pixels (at ``scale`` of the stored size), turned upright by the header's EXIF."""
    orientation = _orientation(header)
    if orientation != 1:
        decoded = decoded.transpose(_ORIENTATIONS[orientation])
    return Decoded(decoded, name, *_upright_content(decoded.size, header.size, 1 / scale, orientation))


def _finish_decode(
    image: Image.Image, name: str, limits: Limits, *, owned: bool, draft: tuple[PreprocessSpec, float] | None = None
) -> Decoded:
    """Decode (at a reduced scale when ``draft`` allows), turn upright, convert to RGB.

    ``owned``: the image was opened here, so it may be changed in place.
    """
    try:
        stored = image.size  # from the header, before a draft reduces it
        scale = _draft(image, *draft) if draft is not None and owned else 1
        image.load()
        if scale == 1 and image.size != stored:  # e.g. a GIF frame larger than its header said
            stored = image.size
            limits.check(stored, name)
        orientation = _orientation(image)
        if orientation != 1:
            image = _exif_transpose(image, in_place=owned)
        image = to_rgb(image)
    except InvalidImageError:
        raise
    except Exception as e:
        # Pillow's loaders raise many types on corrupt data (OSError, SyntaxError, ValueError,
        # struct.error, IndexError, EOFError, MemoryError, ...): all mean this input is unusable.
        raise InvalidImageError(
            f"{name} could not be decoded ({type(e).__name__}: {e}): the file is truncated or corrupt"
        ) from e
    return Decoded(image, name, *_upright_content(image.size, stored, scale, orientation))


def _upright_content(
    decoded: tuple[int, int], stored: tuple[int, int], scale: float, orientation: int
) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """The source's upright size, and the box its picture covers in the upright decoded image.

    A JPEG decoded at 1/``scale`` is ceil(size / scale) pixels, its last row and column only
    partly covered; once turned upright, that partial edge may lie on the other side.
    """
    size = stored[::-1] if orientation in _SWAPS_AXES else stored
    if scale == 1:
        return size, (0.0, 0.0, float(decoded[0]), float(decoded[1]))
    extent = (size[0] / scale, size[1] / scale)
    flip_x, flip_y = _FLIPS.get(orientation, (False, False))
    x0 = decoded[0] - extent[0] if flip_x else 0.0
    y0 = decoded[1] - extent[1] if flip_y else 0.0
    return size, (x0, y0, x0 + extent[0], y0 + extent[1])


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: show the pixels as stored rather than refuse the image
        return 1
    return value if value in _ORIENTATIONS else 1


def _exif_transpose(image: Image.Image, *, in_place: bool) -> Image.Image:
    # Pillow's exif_transpose also drops the orientation tag, so the upright image is not turned
    # again by a later load_image; in place, the stored pixels are freed as the upright ones come.
    if in_place:
        ImageOps.exif_transpose(image, in_place=True)
        return image
    return ImageOps.exif_transpose(image)


def _draft_need(image: Image.Image, spec: PreprocessSpec, margin: float) -> tuple[int, int] | None:
    """``margin`` times the (width, height) the resize needs, in the stored orientation; None: no reduction."""
    if image.format != "JPEG" or not math.isfinite(margin):
        return None
    orientation = _orientation(image)
    upright = image.size[::-1] if orientation in _SWAPS_AXES else image.size
    need = resized_size(upright, spec)
    if orientation in _SWAPS_AXES:
        need = need[::-1]
    return max(1, math.ceil(need[0] * margin)), max(1, math.ceil(need[1] * margin))


def _draft(image: Image.Image, spec: PreprocessSpec, margin: float) -> int:
    """Ask a JPEG decoder for 1/2, 1/4 or 1/8 scale while that keeps ``margin`` times the pixels
    the resize needs; return the scale (1 when not reduced or not a JPEG)."""
    request = _draft_need(image, spec, margin)
    if request is None:
        return 1
    width = image.size[0]
    drafted = image.draft(None, request)  # (mode, box of the whole source in reduced pixels) or None
    if drafted is None or not drafted[1][2]:
        return 1
    return round(width / drafted[1][2])


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode as RGB: alpha over white, 16-bit grey scaled, float grey read as 0..1 or 0..255."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_rgb(image)
    if mode in ("LA", "La"):
        return _over_white(image.convert("LA") if mode == "La" else image, grey=True)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _over_white(image if mode == "RGBA" else image.convert("RGBA"), grey=False)
    return image.convert("RGB")


def _over_white(image: Image.Image, *, grey: bool) -> Image.Image:
    # Pasting through the alpha as a mask gives what alpha_composite over opaque white gives, on
    # one canvas of the output's mode instead of two RGBA ones (grey stays 1 byte a pixel).
    if not grey:
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, (0, 0), image)
        return canvas
    canvas = Image.new("L", image.size, 255)
    canvas.paste(image.getchannel("L"), (0, 0), image.getchannel("A"))
    return canvas.convert("RGB")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey to 8-bit RGB, a strip of rows at a time so the float
    temporaries stay a few MB whatever the image's size (Pillow's own convert clips instead)."""
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // width)
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]
    unit_range = image.mode == "F" and _finite_within_unit(image, strips)
    grey = np.empty((height, width), dtype=np.uint8)
    for top, bottom in strips:
        values = np.array(image.crop((0, top, width, bottom)), dtype=np.float32)
        if image.mode == "F":
            np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            if unit_range:
                values *= np.float32(255.0)
        else:
            values /= np.float32(257.0)  # 0..65535 onto 0..255
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        grey[top:bottom] = values
    return Image.fromarray(grey).convert("RGB")


def _finite_within_unit(image: Image.Image, strips: list[tuple[int, int]]) -> bool:
    width = image.size[0]
    for top, bottom in strips:
        values = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float32)
        finite = values[np.isfinite(values)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            return False
    return True
