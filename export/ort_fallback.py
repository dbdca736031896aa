"""Layer fallback on ONNX Runtime: the layers whose quantization costs the answer most, kept in float.

Calibrated once: the activation ranges of the first quantization are kept in ONNX Runtime's calibration
cache, and every later quantization reuses them (recalibrating at every step took 17 minutes on
EfficientNet-Lite1). Ranked once, by leave-one-out sensitivity of *units*: a layer alone (its weights in
float), or a layer with the layers that read its output (their weights and the activation between them in
float: a tensor is only left unquantized where its writer and its readers all run in float). Each unit is
scored by how much closer the model's probabilities come to the float model's on calibration images (KL).
Measured on EfficientNet-Lite1 and real photos: the stem's output is the
costliest tensor, which no layer alone reveals (stem alone 0.044 -> 0.036 KL, stem with the depthwise conv
that reads it 0.010); a float region is also faster than the same layers kept apart, each between a
DequantizeLinear and a QuantizeLinear. Written here because ORT's ``qdq_loss_debug`` compares tensors,
not answers.
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
RANKING_SECONDS = 600.0  # the ranking stops scoring here; the units left unscored rank last, in graph order
# ORT quantizes these ops' outputs only where their input is already quantized (its "direct 8-bit" ops)
PASS_THROUGH = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Slice", "Split",
                          "Gather", "GatherElements", "Pad", "Resize", "Relu", "Clip"})
COUNTS = (1, 2, 4, 8)  # how many of the top units to keep in float: one candidate each


def rank_by_sensitivity(fp32_path: Path, calibration: CalibrationSet, settings: OrtQuantization, ranges: Path, *,
                        images: int = RANKING_IMAGES, max_seconds: float = RANKING_SECONDS) -> list[tuple[str, ...]]:
    """Units of Conv/Gemm/MatMul node names of ``fp32_path`` (see the module), the one whose INT8 costs
    most first: each is kept in float alone and scored by how much it lowers the KL between the float
    and the quantized model's probabilities on ``images`` calibration images. Bounded by ``max_seconds``:
    units not scored by then rank last, in graph order.

    A unit is kept in float by editing the one quantized graph into what quantization with it in
    ``nodes_to_exclude`` makes (:func:`_with_float_unit`), not by a quantization per unit (64 of those
    took 3 minutes on Lite1). Where the graph has no Q/DQ pairs (QOperator), units are single layers,
    each quantized with the stored ``ranges``."""
    settings = replace(settings, bias_correction=False)  # the order only: plain INT8 ranks as well, 3x cheaper
    float_model = onnx.load(str(fp32_path))
    batch = calibration.array[:images]
    reference = softmax(_logits(str(fp32_path), batch), 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ranked.onnx"
        quantized = onnx.load(str(quantize_onnx_int8(fp32_path, work, calibration, settings=settings, ranges=ranges)))
        units = float_units(quantized, float_model)
        baseline = _kl(reference, _logits(quantized.SerializeToString(), batch))
        gains: dict[tuple[str, ...], float] = {}
        started = time.perf_counter()
        for unit in units:
            if time.perf_counter() - started > max_seconds:
                logger.warning("layer ranking stopped after %.0f s: %d of %d units scored, the rest rank last",
                               max_seconds, len(gains), len(units))
                break
            gain = None
            try:
                variant = _with_float_unit(quantized, float_model, unit)
                if variant is not None:
                    gain = baseline - _kl(reference, _logits(variant, batch))
            except Exception as e:  # an edit ONNX Runtime rejects: never the export's end, quantize instead
                logger.debug("unit %s: graph edit failed (%s), quantizing with it excluded", unit, e)
            if gain is None:
                variant = str(quantize_onnx_int8(fp32_path, work, calibration, ranges=ranges,
                                                 settings=replace(settings, nodes_to_exclude=unit)))
                gain = baseline - _kl(reference, _logits(variant, batch))
            gains[unit] = gain
    return sorted(gains, key=lambda u: -gains[u]) + [u for u in units if u not in gains]


def float_units(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The units the ranking scores, in graph order (a region right after its writer alone, so a time cap
    cuts late layers, not regions): every Conv/Gemm/MatMul of ``float_model`` alone, and every quantized
    activation of ``quantized`` written by one of them and read by such layers only, as its writer and
    readers."""
    names = {n.name for n in float_model.graph.node if n.op_type in RANKED_OPS and n.name}
    regions: dict[str, list[tuple[str, ...]]] = {}
    graph = quantized.graph
    constants = {t.name for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in constants:
            continue
        writer = producers.get(q.input[0])
        if writer is None or writer.name not in names:
            continue
        dqs = readers.get(q.output[0], [])
        layers = [r for dq in dqs for r in readers.get(dq.output[0], [])]
        if layers and all(dq.op_type == "DequantizeLinear" for dq in dqs) and all(r.name in names for r in layers):
            regions.setdefault(writer.name, []).append(tuple(dict.fromkeys([writer.name] + [r.name for r in layers])))
    units = {}
    for node in float_model.graph.node:
        if node.name in names:
            units[(node.name,)] = None
            units.update(dict.fromkeys(regions.get(node.name, [])))
    return list(units)


def _with_float_unit(quantized: onnx.ModelProto, float_model: onnx.ModelProto, unit: tuple[str, ...]) -> bytes | None:
    """The quantized graph as ORT's quantizer makes it with ``unit`` in ``nodes_to_exclude``, serialized: the
    unit's float weights (and biases) back, and every activation that the unit writes (or the graph
    input) and only the unit reads left unquantized (with the activation function the quantizer had folded
    into its range, where it had); None where a layer has no dequantized constant weight to restore."""
    from onnx import helper

    model = onnx.ModelProto.FromString(quantized.SerializeToString())
    graph = model.graph
    if not _restore_float_weights(graph, float_model, unit):
        return None
    constants = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    float_producers = {out: n for n in float_model.graph.node for out in n.output}
    float_constants = {t.name: t for t in float_model.graph.initializer}
    present = {n.name for n in graph.node}
    quantizable = _quantized_op_types()
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]:
        dqs = [n for n in graph.node if n.input and n.input[0] == q.output[0]]
        readers = [n for dq in dqs for n in graph.node if dq.output[0] in n.input]
        writer = producers.get(q.input[0])
        if (any(dq.op_type != "DequantizeLinear" for dq in dqs)
                or writer is not None and writer.name not in unit and _quantizes(writer, producers, quantizable)
                or any(r.name not in unit and r.op_type in quantizable and r.op_type not in PASS_THROUGH
                       for r in readers)):
            continue  # ORT quantizes a tensor that a quantized node writes or reads
        folded = float_producers.get(q.input[0])  # a Relu/Clip the quantizer removed, its range standing in for it
        if folded is not None and folded.name not in present and folded.op_type not in ("Relu", "Clip"):
            return None  # fused by ORT's pre-processing (BatchNormalization, Add): not a range to undo
        for dq in dqs:
            position = list(graph.node).index(dq)
            if folded is not None and folded.name not in present:
                node = onnx.NodeProto.FromString(folded.SerializeToString())
                node.input[0], node.output[0], node.name = q.input[0], dq.output[0], f"{dq.output[0]}_unfolded"
                for extra in node.input[1:]:
                    if extra and extra not in constants:
                        if extra not in float_constants:
                            return None
                        graph.initializer.append(float_constants[extra])
                        constants[extra] = float_constants[extra]
            else:
                node = helper.make_node("Identity", [q.input[0]], [dq.output[0]], name=f"{dq.output[0]}_float")
            graph.node.insert(position, node)
            graph.node.remove(dq)
        graph.node.remove(q)
    keep_float_in(model, list(unit))
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if n.op_type not in ("DequantizeLinear", "QuantizeLinear") or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    return model.SerializeToString()


def _restore_float_weights(graph: onnx.GraphProto, float_model: onnx.ModelProto, unit: tuple[str, ...]) -> bool:
    """Each layer of ``unit`` in ``graph`` reads its float weight (and bias) again instead of its
    DequantizeLinear; False where one has no dequantized constant of the float one's shape."""
    from onnx import numpy_helper

    constants = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_constants = {t.name: t for t in float_model.graph.initializer}
    for name in unit:
        layer = next((n for n in graph.node if n.name == name and n.op_type in RANKED_OPS), None)
        source = float_nodes[name]
        if layer is None or len(layer.input) != len(source.input):
            return False
        for i in range(1, len(layer.input)):
            dq, weight = producers.get(layer.input[i]), float_constants.get(source.input[i])
            if (dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in constants or weight is None
                    or tuple(weight.dims) != tuple(constants[dq.input[0]].dims)):
                return False
            layer.input[i] = f"{name}_float_{i}"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weight), layer.input[i]))
    return True


def _quantizes(writer: onnx.NodeProto, producers: dict[str, onnx.NodeProto], quantizable: set[str]) -> bool:
    """Whether ORT's quantizer quantizes what ``writer`` (kept out of the unit) writes: a quantized op
    does, a pass-through op (Reshape, MaxPool, ...) only where its own input is quantized."""
    if writer.op_type not in quantizable:
        return False
    if writer.op_type not in PASS_THROUGH:
        return True
    source = producers.get(writer.input[0]) if writer.input else None
    return source is not None and source.op_type == "DequantizeLinear"


def _quantized_op_types() -> set[str]:
    """The op types ORT's quantizer quantizes by default (``quantize_static`` with no ``op_types_to_quantize``)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


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
    """One model per count in ``counts``: quantized with ``settings`` and the layers of that many of the
    costliest units (ranked once by :func:`rank_by_sensitivity`) kept in float, written to
    ``out_dir/keep{count}.onnx``, with the names of the layers kept (a count that adds none is skipped).
    Bounded: one calibration, one ranking, ``len(counts)`` quantizations with the stored ranges. Which
    one ships is the search's call, on check images that neither calibrated nor ranked them."""
    with tempfile.TemporaryDirectory() as tmp:
        ranges = Path(tmp) / "ranges.json"  # written by the ranking's first quantization, read by the rest
        ranking = rank_by_sensitivity(fp32_path, calibration, settings, ranges)
        models, seen = [], set()
        for count in counts:
            if count > len(ranking):
                break
            kept = tuple(dict.fromkeys(name for unit in ranking[:count] for name in unit))
            if kept in seen:
                continue
            seen.add(kept)
            models.append((quantize_onnx_int8(fp32_path, out_dir / f"keep{count}.onnx", calibration, ranges=ranges,
                                              settings=replace(settings, nodes_to_exclude=kept)), kept))
    return models
