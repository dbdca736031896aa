"""OpenVINO IR artifacts from an FP32 ONNX file: FP32, FP16 weights, and INT8 through NNCF.

The spec and labels go into the IR's ``rt_info``. ``ov.save_model`` compresses weights to FP16
by default; an FP32 artifact is saved with ``compress_to_fp16=False``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec

from .formats import BuildJob

logger = logging.getLogger(__name__)


def build(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """The ``openvino`` format: an IR at the job's precision."""
    written = export_openvino(job.source, job.staging / "model.xml", job.precision, job.spec, job.labels,
                              calibration=job.calibration)
    # An FP32 artifact must run in FP32: without the hint OpenVINO runs bf16 on CPUs that have it.
    options = {"inference_precision": "f32"} if job.precision == "fp32" else {}
    return [p.name for p in written], options


def export_openvino(
    onnx_path: Path,
    xml_path: Path,
    precision: str,
    spec: PreprocessSpec,
    labels: list[str],
    *,
    calibration: CalibrationSet | None = None,
    fast_bias_correction: bool = False,
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
        model = quantize_nncf(model, calibration, fast_bias_correction=fast_bias_correction)
    model.set_rt_info(json.dumps(spec.to_dict()), ["edge_cls", "preprocess"])
    model.set_rt_info(json.dumps(list(labels)), ["edge_cls", "labels"])
    ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return [xml_path, xml_path.with_suffix(".bin")]


def quantize_nncf(model, calibration: CalibrationSet, *, fast_bias_correction: bool = False):
    """Post-training INT8 with ``nncf.quantize`` on the preprocessed calibration batches.

    Full bias correction is the default: NNCF's own tables show MobileNetV3 losing far more
    top-1 with the fast variant. The MIXED preset (asymmetric activations) keeps the negative
    tail of hard-swish and SiLU outputs; on a demo student (mobilenetv3_small_100, 6 epochs) it
    raised top-1 agreement with PyTorch from 98.8% (PERFORMANCE preset) to 99.4%.
    """
    import nncf

    nncf.set_log_level(logging.WARNING)  # NNCF resets its logger to INFO on import
    settings = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset.MIXED,
        "fast_bias_correction": fast_bias_correction,
    }
    try:
        return nncf.quantize(model, nncf.Dataset(list(calibration.batches(1))), **settings)
    except Exception as e:
        raise ExportError(f"NNCF quantization failed ({type(e).__name__}: {e})") from e
