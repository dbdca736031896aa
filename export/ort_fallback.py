"""Layer fallback on ONNX Runtime: the layers whose quantization costs the answer most, kept in float.

Calibrated once: the activation ranges of the first quantization are kept in ONNX Runtime's calibration
cache, and every later quantization reuses them (recalibrating at every step took 17 minutes on
EfficientNet-Lite1). Ranked once, by leave-one-out sensitivity: each Conv/Gemm alone kept in float, and
scored by how much closer the model's probabilities come to the float model's on calibration images (KL).
Measured on EfficientNet-Lite1 and real photos, the first layers (stem, first depthwise and pointwise
convs) matter most; the error each layer adds at its own output, which this ranked by before, put them
near the bottom. Written here because ORT's ``qdq_loss_debug`` compares tensors, not answers.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from edge_cls.calibration_data import CalibrationSet
from edge_cls.predictions import softmax
from edge_cls.quality.acceptance import kl_divergence

from .onnxruntime_export import keep_float_in, quantize_onnx_int8
from .recipes import OrtQuantization

logger = logging.getLogger(__name__)

RANKED_OPS = ("Conv", "Gemm", "MatMul")
RANKING_IMAGES = 64  # calibration images each leave-one-out model is scored on
RANKING_SECONDS = 600.0  # the ranking stops scoring here; the nodes left unscored rank last, in graph order
COUNTS = (1, 2, 4, 8)  # how many layers to keep in float: one candidate each


def rank_by_sensitivity(fp32_path: Path, calibration: CalibrationSet, settings: OrtQuantization, ranges: Path, *,
                        images: int = RANKING_IMAGES, max_seconds: float = RANKING_SECONDS) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of ``fp32_path``, the one whose INT8 costs most first: each is
    kept in float alone and scored by how much it lowers the KL between the float and the quantized
    model's probabilities on ``images`` calibration images. Bounded by ``max_seconds``: nodes not scored
    by then rank last, in graph order.

    A layer is kept in float by editing the one quantized graph (its float weight and bias back in
    place of their DequantizeLinear, :func:`keep_float_in` for its input): what ORT's quantizer does
    with ``nodes_to_exclude`` and the same ranges, without a quantization per layer (64 of those took
    3 minutes on Lite1). Where the graph has no such layer (QOperator), it quantizes with the stored
    ``ranges`` instead."""
    settings = replace(settings, bias_correction=False)  # the order only: plain INT8 ranks as well, 3x cheaper
    float_model = onnx.load(str(fp32_path))
    nodes = [n.name for n in float_model.graph.node if n.op_type in RANKED_OPS and n.name]
    batch = calibration.array[:images]
    reference = softmax(_logits(str(fp32_path), batch), 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ranked.onnx"
        quantized = onnx.load(str(quantize_onnx_int8(fp32_path, work, calibration, settings=settings, ranges=ranges)))
        baseline = _kl(reference, _logits(quantized.SerializeToString(), batch))
        gains: dict[str, float] = {}
        started = time.perf_counter()
        for name in nodes:
            if time.perf_counter() - started > max_seconds:
                logger.warning("layer ranking stopped after %.0f s: %d of %d layers scored, the rest rank last",
                               max_seconds, len(gains), len(nodes))
                break
            variant = _with_float_layer(quantized, float_model, name)
            if variant is None:
                variant = str(quantize_onnx_int8(fp32_path, work, calibration, ranges=ranges,
                                                 settings=replace(settings, nodes_to_exclude=(name,))))
            gains[name] = baseline - _kl(reference, _logits(variant, batch))
    return sorted(gains, key=lambda n: -gains[n]) + [n for n in nodes if n not in gains]


def _with_float_layer(quantized: onnx.ModelProto, float_model: onnx.ModelProto, name: str) -> bytes | None:
    """The quantized graph with layer ``name``'s weight (and bias) back in float, serialized; None where
    the graph has no such layer with a dequantized constant weight."""
    from onnx import numpy_helper

    layer = next((n for n in quantized.graph.node if n.name == name and n.op_type in RANKED_OPS), None)
    source = next(n for n in float_model.graph.node if n.name == name)
    constants = {t.name for t in quantized.graph.initializer}
    producers = {out: n for n in quantized.graph.node for out in n.output}
    if layer is None or len(layer.input) != len(source.input):
        return None
    dequantized = [producers.get(layer.input[i]) for i in range(1, len(layer.input))]
    if any(dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in constants for dq in dequantized):
        return None
    float_constants = {t.name: t for t in float_model.graph.initializer}
    shapes = {t.name: tuple(t.dims) for t in quantized.graph.initializer}
    if any(source.input[i] not in float_constants
           or tuple(float_constants[source.input[i]].dims) != shapes[dq.input[0]]
           for i, dq in enumerate(dequantized, start=1)):
        return None
    model = onnx.ModelProto.FromString(quantized.SerializeToString())
    layer = next(n for n in model.graph.node if n.name == name)
    for i in range(1, len(layer.input)):
        values = numpy_helper.to_array(float_constants[source.input[i]])
        layer.input[i] = f"{name}_float_{i}"
        model.graph.initializer.append(numpy_helper.from_array(values, layer.input[i]))
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    kept = [n for n in model.graph.node if n.op_type != "DequantizeLinear" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    keep_float_in(model, [name])
    return model.SerializeToString()


def _logits(model: str | bytes, batch: np.ndarray) -> np.ndarray:
    """``model``: a path, or a serialized model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _kl(reference_probabilities: np.ndarray, logits: np.ndarray) -> float:
    return kl_divergence(reference_probabilities, softmax(logits, 1.0))


def fallback_models(fp32_path: Path, out_dir: Path, calibration: CalibrationSet, settings: OrtQuantization, *,
                    counts: tuple[int, ...] = COUNTS) -> list[tuple[Path, tuple[str, ...]]]:
    """One model per count in ``counts``: quantized with ``settings`` and that many of the costliest layers
    (ranked once by :func:`rank_by_sensitivity`) kept in float, written to ``out_dir/keep{count}.onnx``.
    Bounded: one calibration, one ranking, ``len(counts)`` quantizations with the stored ranges. Which
    one ships is the search's call, on check images that neither calibrated nor ranked them."""
    with tempfile.TemporaryDirectory() as tmp:
        ranges = Path(tmp) / "ranges.json"  # written by the ranking's first quantization, read by the rest
        ranking = rank_by_sensitivity(fp32_path, calibration, settings, ranges)
        models = []
        for count in counts:
            if count > len(ranking):
                break
            kept = tuple(ranking[:count])
            models.append((quantize_onnx_int8(fp32_path, out_dir / f"keep{count}.onnx", calibration, ranges=ranges,
                                              settings=replace(settings, nodes_to_exclude=kept)), kept))
    return models
