"""Bias correction for ONNX Runtime's INT8: each Conv/Gemm bias moved to cancel the mean error that
quantizing its weights and its input adds to its output (empirical bias correction, Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction", section 4.2).

Per-channel rounding of depthwise and pointwise weights shifts the mean of every output channel, and
the shifts add up through the network: on EfficientNet-Lite1 and real photos, INT8 *weights alone*
(activations in float) cost 0.96 points of expected top-1 on one half of the check photos, and 0.06
with their biases corrected. ONNX Runtime's quantizer has no bias correction (NNCF's is tied to its own
graph placement, which ONNX Runtime runs 3.5x slower than FP32 on Lite1), so it is written here: one
float pass over the calibration images for the channel means, then ORT quantizes the corrected model
with the activation ranges it had already calibrated, so weights and ranges are unchanged and only the
biases move.

For an output channel ``o`` of a layer ``y = W x + b``, quantized as ``W_q Q(x) + b``, the mean error is
``(W_q - W) E[x] + W_q E[Q(x) - x]`` (summed over the kernel and the input channels ``o`` reads); the
corrected bias subtracts it. ``E[x]`` and ``E[Q(x) - x]`` are per-channel means of the float model's
activations over the calibration images, with ``Q`` the input's own scale and zero point in the INT8
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_cls.calibration_data import CalibrationSet

BATCH = 8  # calibration images per float pass: bounds the memory of every conv input held at once


@dataclass
class _Layer:
    """What the INT8 model says about one Conv/Gemm: its dequantized weight and its input's quantizer."""

    weight: np.ndarray  # float values of the INT8 weight
    input_scale: float | None = None
    input_zero_point: int = 0
    input_range: tuple[int, int] = (0, 255)


def correct_biases(fp32_path: Path, int8_path: Path, calibration: CalibrationSet, out_path: Path, *,
                   skip: tuple[str, ...] | list[str] = ()) -> int:
    """Write ``fp32_path`` with its Conv/Gemm biases corrected for the INT8 model ``int8_path`` (the
    same graph quantized by ONNX Runtime, node names kept) to ``out_path``; ``skip``: nodes left alone
    (kept in float). Returns how many biases moved."""
    model = onnx.load(str(fp32_path))
    layers = _int8_layers(onnx.load(str(int8_path)))
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.name in layers and n.name not in set(skip) and len(n.input) > 2
             and n.input[1] in initializers and n.input[2] in initializers]
    means = _input_means(model, nodes, layers, calibration)
    for node in nodes:
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        quantized = layers[node.name].weight.astype(np.float64)
        mean_x, mean_error = means[node.name]
        shift = _apply(node, quantized - weight, mean_x) + _apply(node, quantized, mean_error)
        bias = numpy_helper.to_array(initializers[node.input[2]])
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(bias.dtype), node.input[2]))
    onnx.save_model(model, str(out_path))
    return len(nodes)


def _int8_layers(model: onnx.ModelProto) -> dict[str, _Layer]:
    """Conv/Gemm nodes of a QDQ model whose weight comes from a DequantizeLinear of a constant, by name."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight_dq = producers.get(node.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in constants:
            continue
        layer = _Layer(weight=_dequantize(weight_dq, constants))
        input_dq = producers.get(node.input[0])
        if input_dq is not None and input_dq.op_type == "DequantizeLinear" and input_dq.input[1] in constants:
            scale = constants[input_dq.input[1]]
            zero_point = constants.get(input_dq.input[2]) if len(input_dq.input) > 2 else None
            if scale.ndim == 0 and zero_point is not None:
                info = np.iinfo(zero_point.dtype)
                layer.input_scale, layer.input_zero_point = float(scale), int(zero_point)
                layer.input_range = (int(info.min), int(info.max))
        layers[node.name] = layer
    return layers


def _dequantize(dq: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray:
    values = constants[dq.input[0]].astype(np.float64)
    scale = constants[dq.input[1]].astype(np.float64)
    zero_point = constants[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else np.zeros_like(scale)
    if scale.ndim:  # per channel, along the node's axis (ONNX's default: 1)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (values - zero_point) * scale


def _input_means(model: onnx.ModelProto, nodes: list[onnx.NodeProto], layers: dict[str, _Layer],
                 calibration: CalibrationSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per node: the per-channel means of its float input and of that input's quantization error."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    graph_input = probe.graph.input[0].name
    outputs = {o.name for o in probe.graph.output}
    wanted = sorted({n.input[0] for n in nodes} - {graph_input})
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(calibration.array), BATCH):
        batch = calibration.array[start:start + BATCH]
        values = dict(zip(wanted, session.run(wanted, {graph_input: batch}))) if wanted else {}
        values[graph_input] = batch
        for node in nodes:
            x = values[node.input[0]].astype(np.float64)
            layer = layers[node.name]
            error = np.zeros_like(x) if layer.input_scale is None else _quantized(x, layer) - x
            spatial = tuple(range(2, x.ndim))  # per image and channel first, then summed over the batch
            totals = (x.mean(axis=spatial).sum(axis=0), error.mean(axis=spatial).sum(axis=0))
            previous = sums.get(node.name)
            sums[node.name] = totals if previous is None else (previous[0] + totals[0], previous[1] + totals[1])
    count = len(calibration.array)
    return {name: (total_x / count, total_error / count) for name, (total_x, total_error) in sums.items()}


def _quantized(x: np.ndarray, layer: _Layer) -> np.ndarray:
    low, high = layer.input_range
    q = np.clip(np.round(x / layer.input_scale) + layer.input_zero_point, low, high)
    return (q - layer.input_zero_point) * layer.input_scale


def _apply(node: onnx.NodeProto, weight: np.ndarray, channel_means: np.ndarray) -> np.ndarray:
    """``weight`` applied to a constant input whose channels are ``channel_means``: the output's shift."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        matrix = weight if attributes.get("transB", 0) else weight.T
        return matrix @ channel_means
    groups = int(attributes.get("group", 1))
    summed = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)  # [out, in per group]
    per_group = summed.reshape(groups, weight.shape[0] // groups, weight.shape[1])
    return np.einsum("gpc,gc->gp", per_group, channel_means.reshape(groups, weight.shape[1])).reshape(-1)
