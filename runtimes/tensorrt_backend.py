"""TensorRT backend: runs serialized engines on an NVIDIA GPU, with cuda-python for memory.

No torch: device buffers come from the CUDA runtime through cuda-python. Buffers grow to the
largest batch seen and are reused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_cls.errors import ArtifactError, BackendUnavailableError, ConfigError, EdgeClsError
from edge_cls.integrity import ArtifactFiles
from edge_cls.manifest import Manifest

from .base import Backend

_PRECISION_NAMES = {"fp32": "f32", "fp16": "f16", "int8": "i8+f16"}


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as e:
            raise BackendUnavailableError(
                "the tensorrt backend needs cuda-python: pip install 'edge-cls[tensorrt]'"
            ) from e
    return runtime


class CudaError(EdgeClsError, RuntimeError):
    """A CUDA runtime call failed."""


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...); raise on error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise CudaError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    """Runs a TensorRT engine built by ``edge_cls.export`` for this GPU and TensorRT version."""

    name = "tensorrt"
    suffixes = (".engine", ".plan")

    def __init__(self, engine: Any, input_name: str, output_name: str, precision: str) -> None:
        self._cudart = _cudart()
        self._engine = engine
        self._context = engine.create_execution_context()
        self._input = input_name
        self._output = output_name
        self._precision = precision
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.max_batch = int(engine.get_tensor_profile_shape(input_name, 0)[2][0])

    @classmethod
    def open(cls, files: ArtifactFiles, manifest: Manifest, *, device: int = 0, **options: Any) -> TensorRTBackend:
        import tensorrt as trt  # lazy: only apps that use this backend pay for it

        if options:
            raise ConfigError(f"unknown tensorrt options {sorted(options)}; known: device")
        cudart = _cudart()
        try:
            _check(cudart.cudaSetDevice(device))
        except CudaError as e:
            raise BackendUnavailableError(f"no usable CUDA device {device} for TensorRT ({e})") from e
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(files.model)  # the bytes that were checked
        if engine is None:
            raise ArtifactError(
                f"{files.path()} could not be deserialized: engines only run on the GPU model and TensorRT "
                "version that built them; rebuild it on this device"
            )
        precision = _PRECISION_NAMES.get(manifest.precision, manifest.precision)
        return cls(engine, manifest.input_name, manifest.output_name, precision)

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def device(self) -> str:
        return "CUDA"

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.max_batch:  # the engine's optimisation profile caps the batch
            return np.concatenate([self.run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])
        cudart = self._cudart
        if not self._context.set_input_shape(self._input, tuple(batch.shape)):
            raise ConfigError(f"the TensorRT engine does not accept input shape {tuple(batch.shape)}")
        output = np.empty(tuple(self._context.get_tensor_shape(self._output)), dtype=np.float32)
        d_in, d_out = self._buffer(self._input, batch.nbytes), self._buffer(self._output, output.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(d_in, batch.ctypes.data, batch.nbytes, h2d, self._stream))
        self._context.set_tensor_address(self._input, d_in)
        self._context.set_tensor_address(self._output, d_out)
        if not self._context.execute_async_v3(self._stream):
            raise CudaError("TensorRT execution failed (see the TensorRT log above)")
        _check(cudart.cudaMemcpyAsync(output.ctypes.data, d_out, output.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return output

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
