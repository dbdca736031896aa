"""Cross-layer equalization of an FP32 ONNX graph, before it is quantized (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019).

Where a convolution's output feeds one other convolution only, directly or through a ReLU (which
commutes with a positive per-channel scale), output channel ``c`` of the first can be divided by
``s_c`` and input channel ``c`` of the second multiplied by it without changing what the pair
computes. Choosing ``s_c = sqrt(r1_c / r2_c)`` (the two channels' weight ranges) equalizes the
ranges, so per-tensor INT8 activations between the layers and per-channel weights both lose less
resolution; a channel scaled up by an earlier transformation (or by training) no longer dominates
its tensor's range. ReLU6/Clip, residual additions and tensors read by several nodes end a pair.

Written here because none of the quantizers we ship with does it on ONNX: ONNX Runtime's quantizer
has no equalization; NNCF's OpenVINO channel alignment is a different, bias-shift transform (also
a recipe); AIMET's CLE lives in ``aimet-onnx``, which pins its own ONNX Runtime. The equalized
graph is checked against the original on random inputs and dropped (with a warning) if it differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

SCALE_LIMITS = (1e-4, 1e4)  # equalization scales are clipped: a near-zero channel must not explode


@dataclass(frozen=True)
class Pair:
    """Two convolutions whose joint function survives a per-channel rescale of the tensor between them."""

    first: onnx.NodeProto
    second: onnx.NodeProto


def equalizable_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Conv -> (Relu ->) Conv chains where each intermediate tensor has exactly one reader."""
    initializers = {i.name for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}

    def only_reader(tensor: str) -> onnx.NodeProto | None:
        readers = consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in outputs else None

    pairs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        nxt = only_reader(node.output[0])
        if nxt is not None and nxt.op_type == "Relu":
            nxt = only_reader(nxt.output[0])
        if (nxt is not None and nxt.op_type == "Conv" and nxt.input[1] in initializers
                and _group(nxt) in (1, _channels(model, nxt))):
            pairs.append(Pair(node, nxt))
    return pairs


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _channels(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    weight = next(i for i in model.graph.initializer if i.name == node.input[1])
    return int(weight.dims[0])


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every equalizable pair equalized once; returns it and the pair count."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {i.name: i for i in model.graph.initializer}
    done = 0
    for pair in equalizable_pairs(model):
        first_w = numpy_helper.to_array(weights[pair.first.input[1]]).astype(np.float64)
        second_w = numpy_helper.to_array(weights[pair.second.input[1]]).astype(np.float64)
        depthwise = _group(pair.second) > 1
        r1 = np.abs(first_w).reshape(first_w.shape[0], -1).max(1)
        r2 = (np.abs(second_w).reshape(second_w.shape[0], -1).max(1) if depthwise
              else np.abs(second_w).transpose(1, 0, 2, 3).reshape(second_w.shape[1], -1).max(1))
        if r1.shape != r2.shape:
            continue
        scale = np.clip(np.sqrt(r1 / np.maximum(r2, 1e-12)), *SCALE_LIMITS)
        scale[(r1 == 0) | (r2 == 0)] = 1.0
        _set(weights[pair.first.input[1]], first_w / scale.reshape(-1, 1, 1, 1))
        if len(pair.first.input) > 2 and pair.first.input[2] in weights:
            bias = numpy_helper.to_array(weights[pair.first.input[2]]).astype(np.float64)
            _set(weights[pair.first.input[2]], bias / scale)
        shape = (-1, 1, 1, 1) if depthwise else (1, -1, 1, 1)
        _set(weights[pair.second.input[1]], second_w * scale.reshape(shape))
        done += 1
    return model, done


def _set(initializer: onnx.TensorProto, values: np.ndarray) -> None:
    dtype = numpy_helper.to_array(initializer).dtype
    initializer.CopyFrom(numpy_helper.from_array(values.astype(dtype), initializer.name))


def equalize_file(source: Path, target: Path, example: np.ndarray) -> int:
    """Equalize ``source`` into ``target`` if the result still computes the same thing on ``example``
    (else copy it unchanged, with a warning); returns the number of pairs equalized."""
    import onnxruntime as ort

    model = onnx.load(str(source))
    equalized, pairs = equalize(model)

    def run(proto: onnx.ModelProto) -> np.ndarray:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: example})[0]

    before, after = run(model), run(equalized)
    if not np.allclose(after, before, rtol=1e-3, atol=1e-3 * float(np.abs(before).max())):
        logger.warning("cross-layer equalization changed what %s computes (max logit difference %.3g); quantizing "
                       "the graph as exported", source, float(np.abs(after - before).max()))
        equalized, pairs = model, 0
    onnx.save_model(equalized, str(target))
    logger.info("cross-layer equalization: %d layer pairs equalized", pairs)
    return pairs
