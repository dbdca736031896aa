"""OpenVINO IR artifacts from an FP32 ONNX file: FP32, FP16 weights, bf16, and INT8 through NNCF.

The spec and labels go into the IR's ``rt_info``. ``ov.save_model`` compresses weights to FP16
by default; every other artifact is saved with ``compress_to_fp16=False``. What precision the
float parts run in is a runtime option (``INFERENCE_PRECISION_HINT``), stored in the manifest:
without it OpenVINO runs an f32 model in bf16 on CPUs that have bf16.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.progress import library_output

from .formats import BuildJob
from .recipes import NncfQuantization

logger = logging.getLogger(__name__)

MAX_ACCURACY_ITERATIONS = 4  # nncf.quantize_with_accuracy_control: layers reverted per search, bounded
ACCURACY_RANKING_SUBSET = 64


def build(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """The ``openvino`` format: an IR by the job's recipe (or precision, without one)."""
    recipe = job.recipe
    settings = recipe.nncf if recipe is not None else (NncfQuantization() if job.precision == "int8" else None)
    compress = recipe.compress_weights_fp16 if recipe is not None else job.precision == "fp16"
    if recipe is not None and recipe.distill is not None:  # the distilled QDQ graph, converted as it is
        from .sources import distilled_source

        written = export_openvino(distilled_source(job), job.staging / "model.xml", "fp32", job.spec, job.labels)
    elif recipe is not None and recipe.ort is not None:  # ONNX Runtime's Q/DQ model, converted as it is
        written = _from_ort_qdq(job, recipe)
    else:
        from .sources import float_source

        written = export_openvino(float_source(job), job.staging / "model.xml", job.precision, job.spec, job.labels,
                                  calibration=job.calibration, settings=settings, compress_to_fp16=compress,
                                  max_drop_fraction=job.max_drop_fraction)
    if recipe is not None:
        options = dict(recipe.runtime)
    else:  # an FP32 artifact must run in FP32: without the hint OpenVINO runs bf16 on CPUs that have it
        options = {"inference_precision": "f32"} if job.precision in ("fp32", "fp16") else {}
    return [p.name for p in written], options


def _from_ort_qdq(job: BuildJob, recipe: Any) -> list[Path]:
    import tempfile

    from .onnxruntime_export import quantize_onnx_int8

    if job.calibration is None:
        raise ExportError("OpenVINO INT8 needs a calibration set")
    from .sources import float_source

    with tempfile.TemporaryDirectory() as tmp:
        qdq = quantize_onnx_int8(float_source(job), Path(tmp) / "qdq.onnx", job.calibration, settings=recipe.ort)
        return export_openvino(qdq, job.staging / "model.xml", "fp32", job.spec, job.labels)


def export_openvino(
    onnx_path: Path, xml_path: Path, precision: str, spec: PreprocessSpec, labels: list[str], *,
    calibration: CalibrationSet | None = None, settings: NncfQuantization | None = None,
    compress_to_fp16: bool = False, max_drop_fraction: float = 0.003,
) -> list[Path]:
    """Convert ``onnx_path`` to an IR at ``xml_path`` (+ ``.bin``); returns the files written."""
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:
        raise ExportError(f"OpenVINO could not convert {onnx_path} ({type(e).__name__}: {e})") from e
    if precision == "int8":
        if calibration is None:
            raise ExportError("OpenVINO INT8 needs a calibration set")
        settings = settings or NncfQuantization()
        if settings.accuracy_control:
            model = quantize_nncf_with_accuracy_control(model, calibration, settings, max_drop_fraction)
        else:
            model = _quantized_once(model, onnx_path, calibration, settings)
    model.set_rt_info(json.dumps(spec.to_dict()), ["edge_cls", "preprocess"])
    model.set_rt_info(json.dumps(list(labels)), ["edge_cls", "labels"])
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return [xml_path, xml_path.with_suffix(".bin")]


def nncf_kwargs(settings: NncfQuantization, calibration: CalibrationSet) -> dict[str, Any]:
    import nncf

    nncf.set_log_level(logging.WARNING)  # NNCF resets its logger to INFO on import
    kwargs: dict[str, Any] = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset.MIXED if settings.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "fast_bias_correction": settings.fast_bias_correction,
    }
    if settings.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER  # NNCF then applies SmoothQuant to the MatMuls
    if settings.channel_alignment:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(disable_channel_alignment=False)
    return kwargs


def quantize_nncf(model: Any, calibration: CalibrationSet, settings: NncfQuantization | None = None) -> Any:
    """Post-training INT8 with ``nncf.quantize`` on the preprocessed calibration batches.

    Full bias correction by default: NNCF's own tables show MobileNetV3 losing far more top-1 with
    the fast variant. The MIXED preset (asymmetric activations) keeps the negative tail of
    hard-swish and SiLU outputs.
    """
    import nncf

    settings = settings or NncfQuantization()
    dataset = nncf.Dataset(list(calibration.batches(1)))
    try:
        with library_output():
            return nncf.quantize(model, dataset, **nncf_kwargs(settings, calibration))
    except Exception as e:
        raise ExportError(f"NNCF quantization failed ({type(e).__name__}: {e})") from e


# Recipes that differ only in how the IR runs (ov-nncf-mixed and ov-nncf-mixed-bf16) share one
# nncf.quantize: same graph, same calibration, same settings give the same IR. The last result only.
_LAST_QUANTIZED: dict[tuple[str, str, NncfQuantization], Any] = {}


def _quantized_once(model: Any, onnx_path: Path, calibration: CalibrationSet, settings: NncfQuantization) -> Any:
    key = (_digest(onnx_path.read_bytes()), _digest(np.ascontiguousarray(calibration.array).data), settings)
    if key not in _LAST_QUANTIZED:
        _LAST_QUANTIZED.clear()
        _LAST_QUANTIZED[key] = quantize_nncf(model, calibration, settings)
    return _LAST_QUANTIZED[key].clone()


def _digest(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def quantize_nncf_with_accuracy_control(
    model: Any, calibration: CalibrationSet, settings: NncfQuantization, max_drop_fraction: float
) -> Any:
    """``nncf.quantize_with_accuracy_control``, bounded: the metric is one minus the expected top-1
    drop against the FP32 model on the calibration images (the acceptance rule's measure, no labels
    needed; the check images stay unseen), and at most MAX_ACCURACY_ITERATIONS rounds of reverting
    layers to float."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from edge_cls.predictions import softmax

    batches = list(calibration.batches(1))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = softmax(np.concatenate([compiled(batch)[0] for batch in batches]))
    rows = np.arange(len(reference))

    def kept(compiled_model: Any, data: Any) -> float:
        predicted = np.concatenate([compiled_model(batch)[0] for batch in data]).argmax(1)
        n = len(predicted)
        return 1.0 - float((reference[rows[:n], reference[:n].argmax(1)] - reference[rows[:n], predicted]).mean())

    dataset = nncf.Dataset(batches)
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=MAX_ACCURACY_ITERATIONS,
                                                  ranking_subset_size=min(ACCURACY_RANKING_SUBSET, len(batches)))
    try:
        with library_output():
            return nncf.quantize_with_accuracy_control(
                model, dataset, dataset, kept, max_drop=max_drop_fraction, drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=restorer, **nncf_kwargs(settings, calibration),
            )
    except Exception as e:
        raise ExportError(f"NNCF accuracy-controlled quantization failed ({type(e).__name__}: {e})") from e
