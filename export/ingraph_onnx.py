"""Preprocessing compiled into an ONNX graph: a few standard operators in front of the model.

The new graph input takes uint8 NHWC pixels; ``Cast``, ``Transpose`` and the normalisation
(``Sub``/``Div`` by 255 x the spec's mean and std) turn them into the tensor the model was
exported for, so the host never makes a float copy. With ``resize`` the input's height and width
are dynamic and an opset-18 ``Resize`` (``antialias=1``: Pillow's filter stretched by the scale,
``half_pixel`` coordinates; cubic with a = -0.5 as Pillow's bicubic) brings the host's uint8 crop
to the model's size. ``keep_aspect_ratio_policy`` could do timm's shorter-side resize too, but the
centre crop would then resize pixels it throws away: the host's crop is a free view of the decoded
array, so the graph gets the crop and stretches it. Only the export side imports this (onnx).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.preprocess.placement import Placement

from .onnx_export import OPSET

METADATA_PLACEMENT = "edge_cls.placement"
PREFIX = "edge_cls_preprocess"
# ONNX Resize settings by the names a placement records: (mode, extra attributes).
RESIZE_MODES = {
    "linear": ("linear", {}),
    "cubic": ("cubic", {"cubic_coeff_a": -0.5}),
    "nearest": ("nearest", {"nearest_mode": "round_prefer_ceil"}),
}


def with_preprocessing(model: onnx.ModelProto, spec: PreprocessSpec, placement: Placement) -> onnx.ModelProto:
    """``model`` (taking the spec's float32 NCHW tensor as its one input) with the placement's graph
    steps in front; the new input keeps the old input's name."""
    graph = model.graph
    if len(graph.input) != 1 or spec.layout != "NCHW":
        raise ExportError("in-graph preprocessing needs a model with one NCHW input")
    original = graph.input[0]
    name = original.name
    inner = f"{PREFIX}/normalised"
    for node in graph.node:
        node.input[:] = [inner if value == name else value for value in node.input]
    nodes, constants = _prefix_nodes(name, inner, spec, placement)
    batch = original.type.tensor_type.shape.dim[0]
    height, width = ("height", "width") if placement.resize_in_graph else spec.input_size
    pixels = helper.make_tensor_value_info(name, TensorProto.UINT8, [batch.dim_param or batch.dim_value or "batch",
                                                                      height, width, 3])
    graph.input.remove(original)
    graph.input.append(pixels)
    graph.initializer.extend(constants)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _require_opset(model)
    _set_placement_metadata(model, placement)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the ONNX graph with preprocessing in front is not valid ({e})") from e
    return model


def _prefix_nodes(source: str, target: str, spec: PreprocessSpec,
                  placement: Placement) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    p = f"{PREFIX}/"
    mean = numpy_helper.from_array(np.asarray([255.0 * m for m in spec.mean], np.float32).reshape(1, 3, 1, 1),
                                   p + "mean")
    std = numpy_helper.from_array(np.asarray([255.0 * s for s in spec.std], np.float32).reshape(1, 3, 1, 1),
                                  p + "std")
    constants = [mean, std]
    nodes = [helper.make_node("Cast", [source], [p + "float"], to=TensorProto.FLOAT, name=p + "cast"),
             helper.make_node("Transpose", [p + "float"], [p + "nchw"], perm=[0, 3, 1, 2], name=p + "layout")]
    current = p + "nchw"
    if placement.resize_in_graph:
        mode, extra = RESIZE_MODES[placement.graph_resize]
        # sizes for all four axes, (N, C) from the input: with ``axes=[2, 3]`` and two sizes, ONNX Runtime's
        # layout optimisation of a QDQ model (ORT_ENABLE_ALL) fails ("Number of elements of input 'sizes' (0)").
        constants += [numpy_helper.from_array(np.asarray(spec.input_size, np.int64), p + "size"),
                      numpy_helper.from_array(np.asarray([0], np.int64), p + "zero"),
                      numpy_helper.from_array(np.asarray([2], np.int64), p + "two")]
        nodes += [helper.make_node("Shape", [current], [p + "shape"], name=p + "shape"),
                  helper.make_node("Slice", [p + "shape", p + "zero", p + "two"], [p + "nc"], name=p + "nc"),
                  helper.make_node("Concat", [p + "nc", p + "size"], [p + "sizes"], axis=0, name=p + "sizes"),
                  helper.make_node("Resize", [current, "", "", p + "sizes"], [p + "resized"], mode=mode, antialias=1,
                                   coordinate_transformation_mode="half_pixel", name=p + "resize", **extra)]
        current = p + "resized"
    if spec.channel_order == "BGR":
        constants.append(numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), p + "bgr"))
        nodes.append(helper.make_node("Gather", [current, p + "bgr"], [p + "reordered"], axis=1, name=p + "bgr"))
        current = p + "reordered"
    nodes += [helper.make_node("Sub", [current, mean.name], [p + "centred"], name=p + "sub_mean"),
              helper.make_node("Div", [p + "centred", std.name], [target], name=p + "div_std")]
    return nodes, constants


def _require_opset(model: onnx.ModelProto) -> None:
    """Resize's ``antialias`` and ``axes`` are opset 18: the default domain must be at least that."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < OPSET:
            raise ExportError(f"in-graph preprocessing needs ONNX opset {OPSET} or later, the model has "
                              f"{entry.version}")


def _set_placement_metadata(model: onnx.ModelProto, placement: Placement) -> None:
    kept = [p for p in model.metadata_props if p.key != METADATA_PLACEMENT]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_PLACEMENT, value=json.dumps(placement.to_dict()))


def rebuild(path: Path, out: Path, spec: PreprocessSpec, placement: Placement) -> list[Path]:
    """Read an ONNX file, put the placement's preprocessing in front, save it as one file."""
    model = onnx.load(str(path))
    onnx.save_model(with_preprocessing(model, spec, placement), str(out))
    return [out]
