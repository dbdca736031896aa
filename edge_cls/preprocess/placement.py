"""Where an artifact's preprocessing runs: on the host, or compiled into the model graph.

The :class:`~edge_cls.preprocess.PreprocessSpec` is the one truth of what an image becomes; a
:class:`Placement` says where each of its steps executes for one artifact, and so what the model
file takes as input:

* ``graph_input="float32"`` (the default, and what an artifact without a placement means): the
  host decodes, resizes, crops and normalises; the model takes the spec's float32 tensor;
* ``graph_input="uint8"``: the model takes RGB uint8 pixels, NHWC, and converts, transposes and
  normalises them itself (OpenVINO PrePostProcessor, or ONNX operators in front). The host only
  decodes and resizes, in uint8: a camera frame or a decoded array never becomes a float copy;
* ``graph_resize``: the graph resizes too, from the host's uint8 centre crop of any size.

``host_resize`` names how the host resizes (``exact``: timm's Pillow transform, pixel for pixel;
``box``: one Pillow call from the crop's box of the source; ``fast``: the same after a reduced-scale
JPEG decode that keeps at least 4x the pixels the resize needs, with Pillow's reducing gap). The
export measures each candidate placement against the exact host path on the check images and
records the choice in the manifest. Only numpy and pillow: this runs on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError
from edge_cls.preprocess import (
    RESIZE_MODES,
    ImageInput,
    PreprocessSpec,
    _decode,
    _limits,
    resize_mode,
    resized_region,
)

GRAPH_INPUTS = ("float32", "uint8")
HOST_RESIZES = RESIZE_MODES
GRAPH_RESIZES = ("linear", "cubic", "bilinear-pillow", "bicubic-pillow", "nearest")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where the spec's steps run for one artifact, and so what its model file takes."""

    graph_input: str = "float32"
    host_resize: str = "exact"
    graph_resize: str | None = None

    def __post_init__(self) -> None:
        if self.graph_input not in GRAPH_INPUTS:
            raise ConfigError(f"graph_input must be one of {GRAPH_INPUTS}, got {self.graph_input!r}")
        if self.host_resize not in HOST_RESIZES:
            raise ConfigError(f"host_resize must be one of {HOST_RESIZES}, got {self.host_resize!r}")
        if self.graph_resize is not None:
            if self.graph_resize not in GRAPH_RESIZES:
                raise ConfigError(f"graph_resize must be one of {GRAPH_RESIZES} or null, got {self.graph_resize!r}")
            if self.graph_input != "uint8":
                raise ConfigError("a graph that resizes takes uint8 pixels: set graph_input='uint8'")

    @property
    def in_graph(self) -> bool:
        """The model normalises (and perhaps resizes) uint8 pixels itself."""
        return self.graph_input == "uint8"

    @property
    def resize_in_graph(self) -> bool:
        return self.graph_resize is not None

    @property
    def name(self) -> str:
        """A short name for tables, e.g. ``graph normalise, host fast resize``."""
        if self.resize_in_graph:
            return f"graph resize ({self.graph_resize}) + normalise"
        where = "graph normalise" if self.in_graph else "host normalise"
        return f"{where}, host {self.host_resize} resize"

    def steps(self) -> dict[str, str]:
        """Where each step runs: ``host`` or ``graph``."""
        graph = "graph" if self.in_graph else "host"
        return {"decode": "host", "crop": "host", "resize": "graph" if self.resize_in_graph else "host",
                "layout": graph, "normalise": graph}

    def input_shape(self, spec_shape: tuple[int, int, int], input_size: tuple[int, int]) -> list[int]:
        """The model file's input shape (-1: dynamic) for a spec of this per-image shape and size."""
        if not self.in_graph:
            return [-1, *spec_shape]
        if self.resize_in_graph:
            return [-1, -1, -1, 3]
        return [-1, *input_size, 3]

    @property
    def input_dtype(self) -> str:
        return self.graph_input

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": self.steps()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        """Inverse of :meth:`to_dict` (``steps`` is derived, and checked to match)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a placement must be a mapping, got {type(data).__name__}")
        values = {k: v for k, v in data.items() if k != "steps"}
        known = {"graph_input", "host_resize", "graph_resize"}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown placement keys: {sorted(unknown)}")
        placement = cls(**values)
        if "steps" in data and data["steps"] != placement.steps():
            raise ConfigError(f"placement steps {data['steps']!r} do not follow from its settings {values!r}")
        return placement


HOST_EXACT = Placement()  # what every artifact without a recorded placement does
#: A graph that resizes gets at most this many times the model's size per side (the fast path's margin).
GRAPH_INPUT_MARGIN = 4


def pixels(spec: PreprocessSpec, image: ImageInput, *, resize: str = "exact", out: np.ndarray | None = None,
           max_pixels: int | None = None, max_aspect_ratio: float | None = None) -> np.ndarray:
    """``image`` as the model's uint8 RGB pixels, (height, width, 3): decoded, resized and cropped
    (padded where the spec pads) exactly as the float path does, not normalised. A camera frame in
    BGR comes out RGB; nothing here makes a float copy."""
    resize = resize_mode(None, resize)
    decoded = _decode(image, _limits(max_pixels, max_aspect_ratio), draft_for=spec if resize == "fast" else None)
    region, region_plan = resized_region(decoded, spec, resize)
    height, width = spec.input_size
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    elif out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.writeable:
        raise ConfigError(f"out must be a writeable uint8 array of shape {(height, width, 3)}, got {out.dtype} "
                          f"{out.shape}")
    if region_plan.fill is not None:
        out[...] = region_plan.fill
    top, left = region_plan.y.offset, region_plan.x.offset
    rows, columns = region.shape[:2]
    out[top:top + rows, left:left + columns] = region[:, :, 2::-1] if decoded.bgr else region[:, :, :3]
    return out


def crop_pixels(spec: PreprocessSpec, image: ImageInput, *, max_pixels: int | None = None,
                max_aspect_ratio: float | None = None) -> np.ndarray:
    """The uint8 RGB pixels of ``image`` that timm's resize and centre crop keep, for a graph that
    resizes them itself (its resize ignores the aspect ratio). The crop's box is rounded to whole
    pixels. A graph resizes in float, so the crop is first reduced on the host, in uint8, to at most
    :data:`GRAPH_INPUT_MARGIN` times the model's size per side (a 2600-px crop of a 4000x3000 photo
    would be 81 MB a float copy): a JPEG by a reduced-scale decode, anything else by Pillow's box
    ``reduce``. Where the spec pads, the host resizes instead and the graph gets the model-size
    pixels (which its resize leaves as they are)."""
    decoded = _decode(image, _limits(max_pixels, max_aspect_ratio), draft_for=spec)
    region_plan = _plan_of(decoded, spec)
    if region_plan.fill is not None:
        return pixels(spec, image, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    (x0, y0, x1, y1), (rx, ry) = decoded.content, region_plan.resized
    sx, sy = (x1 - x0) / rx, (y1 - y0) / ry
    left, top = round(x0 + region_plan.x.start * sx), round(y0 + region_plan.y.start * sy)
    width = max(1, round((region_plan.x.stop - region_plan.x.start) * sx))  # rounded once: a square stays square
    height = max(1, round((region_plan.y.stop - region_plan.y.start) * sy))
    left, top = min(left, decoded.image.size[0] - width), min(top, decoded.image.size[1] - height)
    region = decoded.image.crop((max(0, left), max(0, top), max(0, left) + width, max(0, top) + height))
    factor = math.ceil(min(width / spec.input_size[1], height / spec.input_size[0]) / GRAPH_INPUT_MARGIN)
    if factor > 1:
        region = region.reduce(factor)
    pixels_of = np.asarray(region)
    pixels_of = pixels_of[:, :, 2::-1] if decoded.bgr else pixels_of[:, :, :3]
    return np.ascontiguousarray(pixels_of)


def _plan_of(decoded: Any, spec: PreprocessSpec) -> Any:
    from edge_cls.preprocess._resize import plan

    return plan(decoded.size, spec, decoded.name)


def preprocessor(spec: PreprocessSpec, placement: Placement = HOST_EXACT) -> Callable[[ImageInput], np.ndarray]:
    """image -> what the artifact's model file takes: the spec's float32 tensor, uint8 model-size
    pixels (graph normalises), or the uint8 crop (graph resizes)."""
    if placement.resize_in_graph:
        return partial(crop_pixels, spec)
    if placement.in_graph:
        return partial(pixels, spec, resize=placement.host_resize)
    if placement.host_resize == "exact":
        return spec
    return partial(spec, resize=placement.host_resize)
