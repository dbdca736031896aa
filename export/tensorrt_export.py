"""TensorRT engines from an FP32 ONNX file (NVIDIA GPUs only; ``pip install 'edge-cls[tensorrt]'``).

INT8 uses explicit quantization, TensorRT's recommended path since its implicit calibrators were
deprecated in TensorRT 10: the ONNX model is quantized to QDQ with symmetric scales by ONNX
Runtime on the calibration set, and TensorRT builds INT8 kernels from those Q/DQ nodes.
An FP32 engine is built with TF32 disabled, so it computes in real FP32.
An engine is specific to the GPU and TensorRT version that built it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import BackendUnavailableError, ExportError
from edge_cls.preprocess import PreprocessSpec

from .formats import BuildJob
from .recipes import OrtQuantization

WORKSPACE_BYTES = 1 << 30
MAX_BATCH = 32


def build(job: BuildJob) -> tuple[list[str], dict[str, Any]]:
    """The ``tensorrt`` format: a serialized engine for this GPU."""
    build_engine(job.source, job.staging / "model.engine", job.precision, job.spec, calibration=job.calibration,
                 settings=job.recipe.ort if job.recipe is not None else None)
    return ["model.engine"], {}


def build_engine(
    onnx_path: Path, engine_path: Path, precision: str, spec: PreprocessSpec, *,
    calibration: CalibrationSet | None = None, input_name: str = "input", max_batch: int = MAX_BATCH,
    settings: OrtQuantization | None = None,
) -> Path:
    """Build a serialized engine; INT8 from a Q/DQ graph quantized by ONNX Runtime with ``settings``
    (default: the ``trt-int8`` recipe's symmetric int8 activations, which explicit quantization needs)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError("TensorRT export needs an NVIDIA GPU and pip install 'edge-cls[tensorrt]'") from e

    with tempfile.TemporaryDirectory() as tmp:
        source = onnx_path
        if precision == "int8":
            if calibration is None:
                raise ExportError("TensorRT INT8 needs a calibration set")
            from .onnxruntime_export import quantize_onnx_int8

            source = quantize_onnx_int8(
                onnx_path, Path(tmp) / "qdq.onnx", calibration, input_name=input_name,
                settings=settings or OrtQuantization(activations="int8", symmetric_activations=True),
            )
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(source).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {source}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        profile = builder.create_optimization_profile()
        shape = spec.input_shape
        profile.set_shape(input_name, (1, *shape), (min(8, max_batch), *shape), (max_batch, *shape))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build a {precision} engine from {onnx_path} (see the log above)")
        engine_path.write_bytes(bytes(serialized))
    return engine_path
