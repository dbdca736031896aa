"""Preprocessing compiled into an OpenVINO IR with OpenVINO's own PrePostProcessor.

The IR then takes uint8 NHWC pixels: the conversion to float, the layout change and the
normalisation ((x - 255 mean) / 255 std) run inside the compiled model, fused with its first
layers, and the host never makes a float copy. With ``resize`` the input's height and width are
dynamic and PrePostProcessor resizes whatever uint8 crop it is given to the model's size: its
resize ignores the aspect ratio, so the host still cuts timm's centre crop (a view of the decoded
pixels, no copy); which resize algorithm keeps the answers is measured (benchmarks/image_path.py),
not assumed. Only the export side imports this (openvino).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.preprocess.placement import Placement

# PrePostProcessor's algorithms by the names a placement records.
RESIZE_ALGORITHMS = {
    "linear": "RESIZE_LINEAR",
    "cubic": "RESIZE_CUBIC",
    "bilinear-pillow": "RESIZE_BILINEAR_PILLOW",
    "bicubic-pillow": "RESIZE_BICUBIC_PILLOW",
    "nearest": "RESIZE_NEAREST",
}


def with_preprocessing(model: Any, spec: PreprocessSpec, placement: Placement) -> Any:
    """``model`` (an ``ov.Model`` taking the spec's float32 NCHW tensor) with the placement's graph
    steps in front: uint8 NHWC in, the same logits out."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor, ResizeAlgorithm

    if spec.layout != "NCHW":
        raise ExportError(f"in-graph preprocessing needs an NCHW model input, the spec says {spec.layout}")
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    if placement.resize_in_graph:
        tensor.set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if placement.resize_in_graph:
        steps.resize(getattr(ResizeAlgorithm, RESIZE_ALGORITHMS[placement.graph_resize]), *spec.input_size)
    if spec.channel_order == "BGR":  # the graph takes RGB pixels; the model wants them reversed
        steps.reverse_channels()
    steps.mean([255.0 * m for m in spec.mean]).scale([255.0 * s for s in spec.std])
    try:
        return ppp.build()
    except RuntimeError as e:
        raise ExportError(f"OpenVINO could not add the preprocessing to the model ({e})") from e


def rebuild(xml_path: Path, out_xml: Path, spec: PreprocessSpec, placement: Placement) -> list[Path]:
    """Read an IR, put the placement's preprocessing in front, save it (weights kept as they are)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    rt_info = {key: model.get_rt_info(["edge_cls", key]).astype(str) for key in ("preprocess", "labels")
               if model.has_rt_info(["edge_cls", key])}
    model = with_preprocessing(model, spec, placement)
    for key, value in rt_info.items():
        model.set_rt_info(value, ["edge_cls", key])
    model.set_rt_info(json.dumps(placement.to_dict()), ["edge_cls", "placement"])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return [out_xml, out_xml.with_suffix(".bin")]
