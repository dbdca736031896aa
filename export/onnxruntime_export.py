"""ONNX Runtime artifacts from an FP32 ONNX file: FP16, and static INT8 by recipe.

INT8 recipes (see :mod:`edge_cls.export.recipes`) run ``onnxruntime.quantization.quantize_static``
after ORT's own pre-processing (shape inference and graph optimisation), in QDQ or QOperator form,
with uint8 (U8S8: ORT's fast x86 path) or int8 (S8S8) activations, per-channel int8 weights, and
min-max, percentile or entropy calibration; or NNCF's ONNX backend. Nodes can be kept in float
(``nodes_to_exclude``): :func:`restore_accuracy` uses that to return the layers that hurt the
answer most to float, a few at a time, until the accuracy bar is met.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
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

QUANTIZABLE = ("Conv", "MatMul", "Gemm")  # the ops whose float/int8 error restore_accuracy ranks


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
    copy_metadata(fp32_path, out_path)
    return out_path


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


def rank_quantization_error(fp32_path: Path, int8_path: Path, calibration: CalibrationSet, *,
                            images: int = 32) -> list[str]:
    """Names of the quantized Conv/MatMul/Gemm nodes of ``fp32_path``, worst first: by how much
    relative error each adds at its output over the error already at its input, running the FP32
    and the QDQ model side by side on ``images`` calibration images.

    Written here because ORT's ``qdq_loss_debug`` reports per-tensor SQNR but not the error a node
    itself introduces, which is what deciding "which layer goes back to float" needs."""
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZABLE and n.name]
    watched = sorted({t for n in nodes for t in (*n.output[:1], *n.input[:1]) if t in producers or t == _input(model)})
    float_acts = _activations(model, watched, calibration, images, ort)
    qdq = onnx.load(str(int8_path))
    q_watched = [t for t in watched if any(t in node.output for node in qdq.graph.node) or t == _input(qdq)]
    quant_acts = _activations(qdq, q_watched, calibration, images, ort)
    scores = []
    for node in nodes:
        out, inp = node.output[0], node.input[0]
        if out not in quant_acts or out not in float_acts:
            continue
        added = _relative_error(quant_acts[out], float_acts[out]) - (
            _relative_error(quant_acts[inp], float_acts[inp]) if inp in quant_acts and inp in float_acts else 0.0)
        scores.append((added, node.name))
    return [name for _, name in sorted(scores, reverse=True)]


def _input(model: onnx.ModelProto) -> str:
    return model.graph.input[0].name


def _activations(model: onnx.ModelProto, tensors: list[str], calibration: CalibrationSet, images: int,
                 ort: Any) -> dict[str, np.ndarray]:
    """The values of ``tensors`` (made graph outputs) on the first ``images`` calibration images."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing and name != _input(model):
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in tensors]
    batch = calibration.array[:images]
    values = session.run(names, {_input(model): batch})
    acts = dict(zip(names, values))
    if _input(model) in tensors:
        acts[_input(model)] = batch
    return acts


def _relative_error(quantized: np.ndarray, reference: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(np.linalg.norm(quantized.astype(np.float64) - reference) / (np.linalg.norm(reference) + 1e-12))


def restore_accuracy(
    fp32_path: Path, out_path: Path, calibration: CalibrationSet, settings: OrtQuantization,
    meets_bar: Callable[[Path], bool], *, steps: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> tuple[Path, list[str]] | None:
    """Quantize with ``settings``, then return the worst layers to float (1, 2, 4, ... of them,
    ranked once by :func:`rank_quantization_error`) until ``meets_bar(model_path)`` says yes.

    Calibrated once: the activation ranges of the first quantization are kept in ONNX Runtime's
    calibration cache and every later step quantizes with them (it used to calibrate again at every
    step: 17 minutes on EfficientNet-Lite1 with percentile calibration). Bounded: at most
    ``len(steps)`` re-quantizations. Returns the model and the layers kept in float, or None when even
    the last step misses the bar."""
    from dataclasses import replace

    with tempfile.TemporaryDirectory() as tmp:
        ranges = Path(tmp) / "ranges.json"
        first = quantize_onnx_int8(fp32_path, Path(tmp) / "all.onnx", calibration, settings=settings, ranges=ranges)
        ranking = rank_quantization_error(fp32_path, first, calibration)
        for count in steps:
            if count > len(ranking):
                break
            excluded = tuple(ranking[:count])
            candidate = quantize_onnx_int8(fp32_path, Path(tmp) / f"keep{count}.onnx", calibration,
                                           settings=replace(settings, nodes_to_exclude=excluded), ranges=ranges)
            if meets_bar(candidate):
                shutil.copyfile(candidate, out_path)
                return out_path, list(excluded)
    return None
