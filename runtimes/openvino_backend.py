"""OpenVINO backend: runs IR (``.xml`` + ``.bin``) or ONNX files on CPU, GPU or NPU.

OpenVINO runs an f32 model in bf16 on CPUs with AMX unless ``INFERENCE_PRECISION_HINT`` says
otherwise, so the hint stored in the manifest (``f32`` for FP32 artifacts) is applied, and
:attr:`precision` reports what the compiled model actually runs, read from its runtime graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edge_cls.artifact.integrity import ArtifactFiles
from edge_cls.artifact.manifest import Manifest
from edge_cls.errors import ArtifactError, ConfigError

from .base import Backend
from .pool import ResourcePool

DYNAMIC_SHAPE_CACHE = 16  # compiled input shapes kept for a graph that resizes images of any size
# Layers whose runtime precision tells what the compute-heavy part of the model runs in.
_COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"}


class OpenVINOBackend(Backend):
    """Runs a model compiled by OpenVINO.

    Thread-safe: an ``InferRequest`` serves one inference at a time (sharing one between threads
    fails with "Infer Request is busy" or, worse, returns another call's output), so each call
    borrows its own from a pool. Under ``performance_hint="THROUGHPUT"`` the compiled model has
    several streams and :attr:`concurrency` says how many calls it runs at once.
    """

    name = "openvino"
    suffixes = (".xml", ".onnx")
    throughput_options = {"performance_hint": "THROUGHPUT"}

    def __init__(self, compiled: Any, device: str) -> None:
        self._compiled = compiled
        self._requests: ResourcePool[Any] = ResourcePool(compiled.create_infer_request)
        self._output = compiled.output(0)
        self._device = device
        self._precision = runtime_precision(compiled)
        self._concurrency = _optimal_requests(compiled)
        with self._requests.borrow():  # the first request now, so that the first answer does not wait for it
            pass

    @classmethod
    def open(
        cls,
        files: ArtifactFiles,
        manifest: Manifest,
        *,
        device: str = "CPU",
        inference_precision: str | None = None,
        performance_hint: str = "LATENCY",
        threads: int | None = None,
        **options: Any,
    ) -> OpenVINOBackend:
        import openvino as ov  # lazy: only apps that use this backend pay for it

        if options:
            raise ConfigError(
                f"unknown openvino options {sorted(options)}; "
                "known: device, inference_precision, performance_hint, threads"
            )
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
        precision = inference_precision or precision_hint(manifest)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if manifest.placement.resize_in_graph and device == "CPU":
            # Inputs of any size: the CPU plugin keeps compiled kernels per input shape, up to 5000 by
            # default, so a stream of differently sized images would grow memory without bound.
            config["CPU_RUNTIME_CACHE_CAPACITY"] = DYNAMIC_SHAPE_CACHE
        core = ov.Core()
        try:
            model = _read_model(ov, core, files)
            compiled = core.compile_model(model, device, config)
        except RuntimeError as e:
            raise ArtifactError(f"{files.path()} could not be loaded by OpenVINO on {device} ({e})") from e
        return cls(compiled, device)

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._requests.borrow() as request:
            # Shared: no copy of the input in, none of the output out of OpenVINO (the call is
            # synchronous, so ``batch`` outlives it). The output tensor belongs to the request and is
            # overwritten by its next inference: copied once, here, before the request goes back.
            result = request.infer({0: batch}, share_inputs=True, share_outputs=True)
            return np.array(result[self._output], dtype=np.float32, copy=True)

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        try:
            outputs = [self._compiled.output(name) for name in names]  # by tensor name, as in the ONNX file
        except RuntimeError as e:
            raise ArtifactError(f"the OpenVINO model has no output named one of {list(names)} ({e})") from e
        with self._requests.borrow() as request:
            result = request.infer({0: batch}, share_inputs=True, share_outputs=True)
            return [np.array(result[output], dtype=np.float32, copy=True) for output in outputs]

    def close(self) -> None:
        self._requests.close()
        self._compiled = None

    @classmethod
    def native_precisions(cls, device: str = "CPU") -> frozenset[str]:
        """From the device's ``OPTIMIZATION_CAPABILITIES`` (bf16 only on CPUs that have it)."""
        import openvino as ov

        try:
            capabilities = set(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
        except RuntimeError:  # no such device, or a plugin that does not say
            return frozenset({"fp32"})
        names = {"FP32": "fp32", "FP16": "fp16", "BF16": "bf16", "INT8": "int8"}
        return frozenset(names[c] for c in capabilities if c in names) | {"fp32"}

    def vendor_benchmark(self, model_path: Path, manifest: Manifest, *, iterations: int) -> dict[str, Any] | None:
        """OpenVINO's ``benchmark_app -hint latency`` on the same model, device and precision hint."""
        from .openvino_tool import run_benchmark_app

        if manifest.placement.resize_in_graph:  # any input size: no one shape to give benchmark_app
            return None
        return run_benchmark_app(model_path, manifest.input_name, tuple(manifest.input_shape[1:]), device=self._device,
                                 inference_precision=precision_hint(manifest), iterations=iterations)


def precision_hint(manifest: Manifest) -> str | None:
    """The inference precision the artifact asks for; an FP32 model keeps FP32 whatever the artifact
    (an ONNX file run here has no OpenVINO options, and OpenVINO would run it in bf16 where it can)."""
    return manifest.runtime_options.get("inference_precision") or ("f32" if manifest.precision == "fp32" else None)


def _optimal_requests(compiled: Any) -> int:
    """How many requests the compiled model runs in parallel: 1 under LATENCY, its streams under THROUGHPUT."""
    try:
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except (RuntimeError, TypeError, ValueError):  # a plugin that does not report it
        return 1


def _read_model(ov: Any, core: Any, files: ArtifactFiles) -> Any:
    """The model from the checked bytes: an IR's XML with its ``.bin`` as a weights tensor, or an ONNX file."""
    if PurePosixPath(files.model_file).suffix != ".xml":
        if files.companions:
            raise ArtifactError(
                f"{files.path()} has external data ({', '.join(files.companions)}), which OpenVINO cannot take from "
                "memory: run it with backend='onnxruntime'"
            )
        return core.read_model(files.model)
    weights_name = str(PurePosixPath(files.model_file).with_suffix(".bin"))
    if weights_name not in files:
        raise ArtifactError(f"{files.path()} needs its weights file {weights_name}, which the manifest does not list")
    weights = ov.Tensor(np.frombuffer(files[weights_name], dtype=np.uint8))  # a copy: OpenVINO owns its weights
    return core.read_model(files.model, weights)


def runtime_precision(compiled: Any) -> str:
    """Summarise the precisions the compute layers of a compiled model run in, e.g. ``i8+bf16``.

    Read from the runtime (executable) graph, so it reflects hints, hardware and quantization.
    """
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS and "runtimePrecision" in info:
            counts[info["runtimePrecision"].astype(str)] += 1
    if not counts:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return "+".join(name for name, _ in counts.most_common())
