"""A faster JPEG decoder, when the optional ``simplejpeg`` is installed (``pip install 'edge-cls[fast]'``).

simplejpeg wraps the same libjpeg-turbo as Pillow with the same defaults (accurate integer DCT,
fancy upsampling), so a full-scale decode gives Pillow's pixels bit for bit (tests/preprocess/
test_jpeg.py); it skips Pillow's Python-level file parsing, and it decodes into 4 bytes a pixel
(RGBX), the layout Pillow keeps RGB in, so the pixels become a Pillow image without a copy
(``Image.frombuffer``). Reduced-scale decoding (the fast path) uses the scales Pillow's ``draft``
uses, 1/2, 1/4 and 1/8, though libjpeg-turbo has every M/8: the same pixels either way, so the
decoder is a matter of speed only and the fast path's measured fidelity holds for both.
Which decoder is faster, and by how much, is measured in benchmarks/results/image_path.md.

Only numpy and pillow (simplejpeg when present): this runs on the device.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from PIL import Image

_AVAILABLE: bool | None = None
DECODABLE_MODES = ("RGB", "L")  # CMYK and YCCK JPEGs go to Pillow, which converts them
SCALES = (0.125, 0.25, 0.5, 1.0)  # Pillow's draft scales (libjpeg-turbo has every M/8)


def available() -> bool:
    """Whether simplejpeg is installed (looked up once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = importlib.util.find_spec("simplejpeg") is not None
    return _AVAILABLE


def decode(image: Image.Image, fp: Any, need: tuple[int, int] | None) -> tuple[Image.Image, float] | None:
    """Decode the JPEG that ``image`` (opened by Pillow, not yet loaded) was read from, with simplejpeg.

    ``need``: the smallest (width, height), in stored orientation, the decoded image may have: a
    reduced scale is used while both sides stay at least that large. Returns the RGBX image and
    the scale it was decoded at (1.0: full size), or None where simplejpeg does not apply (not
    installed, not a baseline RGB or grey JPEG, or it refuses the data: Pillow then decodes).
    """
    if not available() or image.format != "JPEG" or image.mode not in DECODABLE_MODES:
        return None
    import simplejpeg

    try:
        fp.seek(0)
        data = fp.read()
        scale = _scale(image.size, need)
        if scale < 1:
            minimum = [math.ceil(side * scale) for side in image.size]  # libjpeg's size at that scale
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_width=minimum[0], min_height=minimum[1])
        else:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGBX")
    except (ValueError, OSError, MemoryError):  # simplejpeg's errors on data Pillow may still read or explain
        return None
    height, width = pixels.shape[:2]
    decoded = Image.frombuffer("RGBX", (width, height), pixels, "raw", "RGBX", 0, 1)
    return decoded, _decoded_scale(image.size, (width, height))


def _scale(size: tuple[int, int], need: tuple[int, int] | None) -> float:
    """The smallest of SCALES that keeps both sides at least ``need``."""
    if need is None:
        return 1.0
    return next((s for s in SCALES if all(math.ceil(n * s) >= m for n, m in zip(size, need))), 1.0)


def _decoded_scale(stored: tuple[int, int], decoded: tuple[int, int]) -> float:
    """The scale that made ``decoded`` from ``stored`` (libjpeg rounds each side up)."""
    return next((s for s in SCALES if all(math.ceil(n * s) == d for n, d in zip(stored, decoded))), 1.0)
