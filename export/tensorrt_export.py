"""TensorRT engines (NVIDIA GPUs only; ``pip install 'edge-cls[tensorrt]'``), built from ONNX.

Every engine is built from an ONNX graph that already carries its precision, as a strongly typed
network: TensorRT 11 removed the weak-typing flags (``BuilderFlag.FP16``/``INT8``) and 10.12
deprecated them, so precision lives in the graph on both: FP32 from the exported graph (TF32 off
where the flag exists), FP16 from the graph converted to FP16 (``onnxruntime.transformers.float16``),
INT8 from a Q/DQ graph with symmetric int8 activations quantized by ONNX Runtime (explicit
quantization; the implicit calibrators are gone in 11). An engine is specific to the GPU and
TensorRT version that built it, so on an edge board it is built there: :func:`write_source` writes
the ONNX graph a candidate bundle carries for ``edge-cls choose`` to build on the device, and
:func:`build_engine` needs neither torch nor the training stack.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec

from .formats import BuildJob
from .recipes import OrtQuantization

SYMMETRIC_INT8 = OrtQuantization(activations="int8", symmetric_activations=True)


def build(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """The ``tensorrt`` format: a serialized engine for this GPU, from the recipe's ONNX graph."""
    with tempfile.TemporaryDirectory() as tmp:
        source = write_source(job, Path(tmp) / "model.onnx")
        build_engine(source, job.staging / "model.engine", job.spec)
    return ["model.engine"], {}


def write_source(job: BuildJob, out: Path) -> Path:
    """The ONNX graph at the recipe's precision that an engine is built from (on this machine, or on
    the device from a candidate bundle)."""
    from .onnx_export import copy_metadata
    from .onnxruntime_export import convert_onnx_fp16, quantize_onnx_int8

    if job.precision == "fp32":
        shutil.copyfile(job.source, out)
    elif job.precision == "fp16":
        convert_onnx_fp16(job.source, out)
        copy_metadata(job.source, out)
    else:
        if job.calibration is None:
            raise ExportError("TensorRT INT8 needs a calibration set")
        settings = job.recipe.ort if job.recipe is not None and job.recipe.ort is not None else SYMMETRIC_INT8
        quantize_onnx_int8(job.source, out, job.calibration, settings=settings)
    return out


def build_engine(onnx_path: Path, engine_path: Path, spec: PreprocessSpec) -> Path:
    """Build a serialized engine from ``onnx_path`` (see :meth:`TensorRTBackend.compile`)."""
    from edge_cls.runtimes.tensorrt_backend import TensorRTBackend

    engine_path.write_bytes(TensorRTBackend.compile(Path(onnx_path).read_bytes(), spec.input_shape))
    return engine_path


def build_deferred(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """For a candidate bundle: the ONNX graph the device builds the engine from. The build host checks
    its answers with ONNX Runtime (the device checks the engine's again)."""
    write_source(job, job.staging / "model.onnx")
    return ["model.onnx"], {"engine_from": "model.onnx"}
