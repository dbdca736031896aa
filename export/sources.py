"""The graphs a recipe quantizes, made once per export and shared between the recipes (and formats)
that use them: the FP32 graph equalized across layers, and the QDQ graph of a quantization-aware
distillation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_cls.errors import ExportError

from .formats import BuildJob

logger = logging.getLogger(__name__)


def float_source(job: BuildJob) -> Path:
    """The FP32 ONNX graph the recipe starts from: as exported, or equalized (``recipe.equalize``)."""
    if job.recipe is None or not job.recipe.equalize:
        return job.source
    if "equalized" not in job.shared:
        from .equalize import equalize_file

        target = job.source.with_name("model-equalized.onnx")
        example = job.calibration.array[:4] if job.calibration is not None else np.zeros((2, *job.spec.input_shape),
                                                                                          np.float32)
        job.shared["equalized_pairs"] = equalize_file(job.source, target, example)
        job.shared["equalized"] = target
    return job.shared["equalized"]


def distilled_source(job: BuildJob) -> Path:
    """The QDQ graph of the recipe's quantization-aware distillation (run once per settings)."""
    from .onnx_export import copy_metadata
    from .qad import TuningData, distill_quantized

    settings = job.recipe.distill
    key = f"distilled:{settings}:{id(job.calibration)}"  # a second cross-fitting fold distils again
    if key not in job.shared:
        if job.model is None or job.calibration is None:
            raise ExportError("quantization-aware distillation needs the PyTorch model and calibration images")
        tuning = job.tuning or TuningData.from_calibration(job.calibration)
        target = job.source.with_name(f"model-qad-{len(job.shared)}.onnx")
        run = distill_quantized(job.model, job.calibration, tuning, settings, target)
        copy_metadata(job.source, target)
        job.shared[key] = (target, run)
    path, run = job.shared[key]
    job.shared["last_distillation"] = run
    return path
