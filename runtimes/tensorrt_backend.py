"""TensorRT backend: runs serialized engines on an NVIDIA GPU, with cuda-python for memory.

No torch: device buffers come from the CUDA runtime through cuda-python. Buffers grow to the
largest batch seen and are reused.

Thread-safe: an execution context, its stream and its buffers serve one inference at a time, so
each call borrows a set of its own from a pool (the engine, with its weights, is shared). Each
context holds its own activation memory (``engine.device_memory_size``): N threads calling at
once cost N times that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_cls.artifact.integrity import ArtifactFiles
from edge_cls.artifact.manifest import Manifest
from edge_cls.errors import ArtifactError, BackendUnavailableError, ConfigError, EdgeClsError

from .base import Backend
from .pool import ResourcePool

_PRECISION_NAMES = {"fp32": "f32", "fp16": "f16", "int8": "i8+f32"}
WORKSPACE_BYTES = 1 << 30
MAX_BATCH = 32


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
    """Runs a TensorRT engine built by ``edge_cls.export`` for this GPU and TensorRT version; thread-safe."""

    name = "tensorrt"
    suffixes = (".engine", ".plan")
    compiles_on_device = True

    def __init__(self, engine: Any, input_name: str, output_name: str, precision: str, device: int = 0) -> None:
        self._cudart = _cudart()
        self._engine = engine
        self._input = input_name
        self._output = output_name
        self._precision = precision
        self._device = "CUDA"
        self._device_index = device
        self._slots: ResourcePool[_Slot] = ResourcePool(self._new_slot, self._free_slot)
        self.max_batch = int(engine.get_tensor_profile_shape(input_name, 0)[2][0])
        self._outputs = _output_names(engine)  # TensorRT needs an address for each, fetched or not
        with self._slots.borrow():  # the first context now: a GPU out of memory fails at load, not at run
            pass

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
        return cls(engine, manifest.input_name, manifest.output_name, precision, device=device)


    @classmethod
    def compile(cls, onnx: bytes, input_shape: tuple[int, ...], *, input_name: str = "input",
                max_batch: int = MAX_BATCH) -> bytes:
        """A serialized engine for this GPU from an ONNX graph that carries its precision (FP32, FP16, or
        Q/DQ INT8 with symmetric activations), built as a strongly typed network: TensorRT 11 removed the
        weak-typing flags (``BuilderFlag.FP16``/``INT8``) and 10.12 deprecated them. Engines only run on
        the GPU and TensorRT version that built them, so a device builds its own (``edge-cls choose``)."""
        import tensorrt as trt  # lazy: only apps that use this backend pay for it

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # ignored (always on) in 11
        network = builder.create_network(0 if strong is None else 1 << int(strong))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"TensorRT could not parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # an FP32 graph computes in real FP32
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, *input_shape), (min(8, max_batch), *input_shape), (max_batch, *input_shape))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError("TensorRT failed to build an engine (see its log above)")
        return bytes(serialized)

    def _new_slot(self) -> _Slot:
        context = self._engine.create_execution_context()
        if context is None:
            raise CudaError("TensorRT could not create an execution context (out of GPU memory?)")
        return _Slot(context, _check(self._cudart.cudaStreamCreate()))

    def _free_slot(self, slot: _Slot) -> None:
        for pointer, _ in slot.buffers.values():
            self._cudart.cudaFree(pointer)
        slot.buffers.clear()
        self._cudart.cudaStreamDestroy(slot.stream)
        slot.context = None

    def _buffer(self, slot: _Slot, name: str, nbytes: int) -> int:
        pointer, size = slot.buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = _check(self._cudart.cudaMalloc(nbytes))
            slot.buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_outputs(batch, (self._output,))[0]

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        unknown = [name for name in names if name not in self._outputs]
        if unknown:
            raise ArtifactError(f"the TensorRT engine has no output {unknown[0]!r} (it has {', '.join(self._outputs)})")
        if len(batch) > self.max_batch:  # the engine's optimisation profile caps the batch
            parts = [self.run_outputs(batch[i:i + self.max_batch], names) for i in range(0, len(batch), self.max_batch)]
            return [np.concatenate([part[j] for part in parts]) for j in range(len(names))]
        _check(self._cudart.cudaSetDevice(self._device_index))  # the current device is per host thread
        with self._slots.borrow() as slot:
            return self._run_on(slot, batch, names)

    def _run_on(self, slot: _Slot, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        cudart, context = self._cudart, slot.context
        if not context.set_input_shape(self._input, tuple(batch.shape)):
            raise ConfigError(f"the TensorRT engine does not accept input shape {tuple(batch.shape)}")
        d_in = self._buffer(slot, self._input, batch.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(d_in, batch.ctypes.data, batch.nbytes, h2d, slot.stream))
        context.set_tensor_address(self._input, d_in)
        hosts: dict[str, np.ndarray] = {}
        for name in self._outputs:
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=np.float32)
            context.set_tensor_address(name, self._buffer(slot, name, host.nbytes))
            if name in names:
                hosts[name] = host
        if not context.execute_async_v3(int(slot.stream)):
            raise CudaError("TensorRT execution failed (see the TensorRT log above)")
        for name, host in hosts.items():
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, slot.buffers[name][0], host.nbytes, d2h, slot.stream))
        _check(cudart.cudaStreamSynchronize(slot.stream))
        return [hosts[name] for name in names]

    def close(self) -> None:
        self._cudart.cudaSetDevice(self._device_index)  # the buffers and streams live on that device
        self._slots.close()


def _output_names(engine: Any) -> tuple[str, ...]:
    import tensorrt as trt

    names = (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))
    return tuple(name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT)


@dataclass
class _Slot:
    """What one inference needs to itself: an execution context (shapes, tensor addresses), a CUDA
    stream and device buffers that grow to the largest batch seen."""

    context: Any
    stream: Any
    buffers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (pointer, bytes)
