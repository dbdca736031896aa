"""ONNX Runtime artifacts from an FP32 ONNX file: FP16, and static INT8 by recipe.

INT8 recipes (see :mod:`edge_cls.export.recipes`) run ``onnxruntime.quantization.quantize_static``
after ORT's own pre-processing (shape inference and graph optimisation), in QDQ or QOperator form,
with uint8 (U8S8: ORT's fast x86 path) or int8 (S8S8) activations, per-channel int8 weights, and
min-max, percentile or entropy calibration; or NNCF's ONNX backend. Nodes can be kept in float
(``nodes_to_exclude``, made to stay float in ONNX Runtime by :func:`keep_float`):
:mod:`edge_cls.export.ort_fallback` uses that to return the layers that hurt the answer most to float.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.progress import library_output

from .formats import BuildJob
from .onnx_export import copy_metadata
from .recipes import NncfQuantization, OrtQuantization

logger = logging.getLogger(__name__)


def build(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """The ``onnx`` format: the FP32 file as is, converted to FP16, or INT8 by the job's recipe (ORT's
    quantizer, NNCF's ONNX backend, or a quantization-aware distillation), from the exported or the
    equalized FP32 graph."""
    from .sources import distilled_source, float_source

    out = job.staging / "model.onnx"
    recipe = job.recipe
    if job.precision == "fp32":
        shutil.copyfile(job.source, out)
    elif job.precision == "fp16":
        convert_onnx_fp16(job.source, out)
    elif job.calibration is None:
        raise ExportError("ONNX Runtime INT8 needs a calibration set")
    elif recipe is not None and recipe.distill is not None:
        shutil.copyfile(distilled_source(job), out)
    elif recipe is not None and recipe.nncf is not None:
        quantize_onnx_nncf(float_source(job), out, job.calibration, settings=recipe.nncf)
    else:
        quantize_onnx_int8(float_source(job), out, job.calibration, settings=recipe.ort if recipe else None)
    copy_metadata(job.source, out)
    return [out.name], {}


def quantize_onnx_int8(
    fp32_path: Path, out_path: Path, calibration: CalibrationSet, *, input_name: str = "input",
    settings: OrtQuantization | None = None, ranges: Path | None = None,
) -> Path:
    """Static INT8 with ORT's quantizer; ``settings`` default to QDQ U8S8 per-channel min-max.

    ``ranges``: ONNX Runtime's calibration cache (``calibration_cache_path``). The first call writes
    the activation ranges there, later calls quantize with them instead of calibrating again (a
    different set of layers kept in float needs no new calibration)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or OrtQuantization()
    if settings.bias_correction:
        return _quantize_bias_corrected(fp32_path, out_path, calibration, input_name, settings, ranges)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    # Calibrate a few images at a time: ORT's calibrators keep every intermediate output of what they
    # are given until they reduce it, which for 300 images of a 240-px model is tens of GB (seen: the
    # OOM killer). "CalibStridedMinMax" is ORT's own chunking; it serves the histogram methods too.
    options: dict[str, Any] = {"CalibStridedMinMax": CALIBRATION_STRIDE}
    if settings.symmetric_activations:
        options.update(ActivationSymmetric=True, WeightSymmetric=True)
    kwargs = {
        "quant_format": QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
        "per_channel": settings.per_channel,
        "activation_type": QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": list(settings.nodes_to_exclude) or None,
        "extra_options": options or None,
    }
    if ranges is not None and _takes_calibration_cache():
        kwargs["calibration_cache_path"] = str(ranges)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            with library_output():  # the histogram calibrators print progress
                try:
                    quantize_static(str(prepared), str(out_path), _reader(calibration, input_name),
                                    calibrate_method=methods[settings.calibration], **kwargs)
                except ValueError as e:
                    if settings.calibration == "minmax":
                        raise
                    # Histogram calibrators fail on an activation with a (near-)constant range.
                    logger.warning("%s calibration failed (%s); calibrating with min-max instead",
                                   settings.calibration, e)
                    quantize_static(str(prepared), str(out_path), _reader(calibration, input_name),
                                    calibrate_method=CalibrationMethod.MinMax, **kwargs)
        except Exception as e:  # ORT quantization raises many types
            raise ExportError(f"ONNX Runtime INT8 quantization of {fp32_path} failed ({type(e).__name__}: {e})") from e
    if settings.nodes_to_exclude:
        keep_float(out_path, settings.nodes_to_exclude)
    copy_metadata(fp32_path, out_path)
    return out_path


def _quantize_bias_corrected(fp32_path: Path, out_path: Path, calibration: CalibrationSet, input_name: str,
                             settings: OrtQuantization, ranges: Path | None) -> Path:
    """Quantize, correct the FP32 biases for what that INT8 model does to each layer's mean, quantize the
    corrected model with the same activation ranges (:mod:`edge_cls.export.bias_correction`)."""
    from dataclasses import replace

    from .bias_correction import correct_biases

    plain = replace(settings, bias_correction=False)
    with tempfile.TemporaryDirectory() as tmp:
        ranges = ranges or Path(tmp) / "ranges.json"
        first = quantize_onnx_int8(fp32_path, Path(tmp) / "first.onnx", calibration, input_name=input_name,
                                   settings=plain, ranges=ranges)
        corrected = Path(tmp) / "corrected.onnx"
        try:
            moved = correct_biases(fp32_path, first, calibration, corrected, skip=settings.nodes_to_exclude)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ExportError(f"bias correction of {fp32_path} failed ({type(e).__name__}: {e})") from e
        logger.info("bias correction: %d biases moved", moved)
        quantize_onnx_int8(corrected, out_path, calibration, input_name=input_name, settings=plain, ranges=ranges)
    copy_metadata(fp32_path, out_path)
    return out_path


def keep_float(path: Path, nodes: tuple[str, ...] | list[str]) -> int:
    """Make the Conv/Gemm ``nodes`` that the quantizer left in float stay float when ONNX Runtime loads
    the model; returns how many needed it.

    ONNX Runtime's ``WeightBiasQuantization`` graph transformer (basic level, on by default) quantizes
    the float weights of every Conv/Gemm whose input comes from a DequantizeLinear with a per-tensor
    scale, to *per-tensor* INT8: exactly what ``nodes_to_exclude`` leaves behind. Per-tensor weights are
    far worse than the per-channel ones the node would have had (EfficientNet-Lite1's first depthwise
    conv "kept in float" tripled the KL to the float model), so keeping layers in float made models
    worse. The transformer matches a per-tensor input scale only: the kept node reads its input through
    its own DequantizeLinear with the same scale and zero point repeated per channel (axis 1), which
    computes the same values and keeps the node float in ONNX Runtime and in every other runtime."""
    model = onnx.load(str(path))
    changed = keep_float_in(model, nodes)
    if changed:
        onnx.save_model(model, str(path))
    return changed


def keep_float_in(model: onnx.ModelProto, nodes: tuple[str, ...] | list[str]) -> int:
    """:func:`keep_float` on a model in memory."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    wanted, changed = set(nodes), 0
    for node in list(graph.node):
        if node.name not in wanted or node.op_type not in ("Conv", "Gemm") or node.input[1] not in initializers:
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in initializers:
            continue
        scale = numpy_helper.to_array(initializers[dq.input[1]])
        if scale.ndim or len(dq.input) < 3 or dq.input[2] not in initializers:
            continue
        zero_point = numpy_helper.to_array(initializers[dq.input[2]])
        channels = _input_channels(node, numpy_helper.to_array(initializers[node.input[1]]))
        names = [f"{node.name}_float_input_{part}" for part in ("scale", "zero_point", "dq")]
        graph.initializer.extend([numpy_helper.from_array(np.full(channels, scale, scale.dtype), names[0]),
                                  numpy_helper.from_array(np.full(channels, zero_point, zero_point.dtype), names[1])])
        position = list(graph.node).index(node)
        graph.node.insert(position, helper.make_node("DequantizeLinear", [dq.input[0], names[0], names[1]],
                                                     [names[2]], name=names[2], axis=1))
        node.input[0] = names[2]
        changed += 1
    return changed


def _input_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """The size of axis 1 of a Conv's or Gemm's input, read from its weight."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return int(weight.shape[1] * attributes.get("group", 1))
    return int(weight.shape[1] if attributes.get("transB", 0) else weight.shape[0])


def _takes_calibration_cache() -> bool:
    """ONNX Runtime's quantizer reads and writes precomputed ranges since it has ``calibration_cache_path``."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


CALIBRATION_STRIDE = 8  # images per calibration chunk: bounds the calibrators' memory (Lite1, 240 px, 9: 4.2 GB peak)


def _reader(calibration: CalibrationSet, input_name: str, stride: int | None = None) -> Any:
    """ORT's calibration reader over the set, one image per call, in chunks of ``stride`` images
    (ORT's ``CalibStridedMinMax`` calls ``set_range`` chunk by chunk).

    Always the same chunk size, whatever the number of images: min-max ranges do not depend on it,
    but the histogram methods (percentile, entropy) lay out their bins from the first chunk, so a
    size that followed the image count would let one more image change the shipped ranges. ORT
    wants ``len`` to be a multiple of the stride, so ``len`` is rounded up and the last chunk is
    shorter (never empty)."""
    from onnxruntime.quantization import CalibrationDataReader

    count = len(calibration)
    stride = stride or CALIBRATION_STRIDE

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, count)

        def __len__(self) -> int:
            return -(-count // stride) * stride

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._end = start_index, min(end_index, count)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= self._end:
                return None
            batch = calibration.array[self._next:self._next + 1]
            self._next += 1
            return {input_name: batch}

    return Reader()


def quantize_onnx_nncf(
    fp32_path: Path, out_path: Path, calibration: CalibrationSet, *, settings: NncfQuantization | None = None
) -> Path:
    """INT8 through NNCF's ONNX backend (a QDQ model ONNX Runtime runs), with the recipe's NNCF settings."""
    import nncf

    from .openvino_export import nncf_kwargs

    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    dataset = nncf.Dataset(list(calibration.batches(1)), lambda batch: {input_name: batch})
    kwargs = nncf_kwargs(settings or NncfQuantization(), calibration)
    try:
        with library_output():
            quantized = nncf.quantize(model, dataset, **kwargs)
    except Exception as e:  # NNCF raises many types
        raise ExportError(f"NNCF (ONNX backend) quantization failed ({type(e).__name__}: {e})") from e
    onnx.save_model(quantized, str(out_path))
    copy_metadata(fp32_path, out_path)
    return out_path


def convert_onnx_fp16(fp32_path: Path, out_path: Path) -> Path:
    """FP16 weights and compute, FP32 input/output so the runtime API does not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:
        raise ExportError(f"FP16 conversion of {fp32_path} failed ({type(e).__name__}: {e})") from e
    onnx.save_model(converted, str(out_path))
    return out_path
