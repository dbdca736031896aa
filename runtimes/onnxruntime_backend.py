"""ONNX Runtime backend: runs ``.onnx`` files (FP32, FP16 or QDQ INT8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_cls.artifact.integrity import ArtifactFiles
from edge_cls.artifact.manifest import Manifest
from edge_cls.errors import ArtifactError, ConfigError

from .base import Backend

# ONNX Runtime does not report kernel precisions. These follow from the graph: QDQ INT8 runs
# quantized kernels for the quantized ops and f32 for the rest; an FP16 graph runs f16 kernels
# where the provider has them and f32 through inserted casts elsewhere (most ops on x86 CPUs).
_PRECISION_NAMES = {"fp32": "f32", "fp16": "f16+f32", "int8": "i8+f32"}


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with ONNX Runtime, on the CPU unless other providers are given.

    Thread-safe: ``InferenceSession.run`` may be called from several threads at once on one
    session (ONNX Runtime documents it), so every thread shares the one session.
    """

    name = "onnxruntime"
    suffixes = (".onnx",)
    # Idle intra-op threads sleep instead of spinning, leaving the cores to the decoding threads.
    throughput_options = {"spin": False}

    def __init__(self, session: Any, input_name: str, output_name: str, precision: str) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        self._precision = precision

    @classmethod
    def open(
        cls,
        files: ArtifactFiles,
        manifest: Manifest,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        spin: bool = True,
        **options: Any,
    ) -> OnnxRuntimeBackend:
        """``spin=False`` stops ORT's idle intra-op threads from busy-waiting for the next call: on a
        few cores that leaves CPU to the decoding threads of :meth:`Classifier.predict_stream`
        (2 vCPUs: 1.7-2.3x a ``predict`` loop instead of 1.4-1.7x, benchmarks/results/runtime.md)
        but wakes them late for the next call. ``load(..., throughput=True)`` sets it."""
        import onnxruntime as ort  # lazy: only apps that use this backend pay for it

        if options:
            raise ConfigError(f"unknown onnxruntime options {sorted(options)}; known: providers, threads, spin")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3  # errors only; shape-inference warnings are noise here
        if threads:
            session_options.intra_op_num_threads = threads
        if not spin:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The model comes from the bytes that were checked, never from the path again. Other listed
        # files are the model's external data, handed over in memory under the names the model uses.
        external = files.companions
        if external:
            session_options.add_external_initializers_from_files_in_memory(
                list(external), list(external.values()), [len(data) for data in external.values()]
            )
        try:
            session = ort.InferenceSession(
                files.model, session_options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped errors for a bad model file
            raise ArtifactError(f"{files.path()} could not be loaded by onnxruntime ({e}): rebuild the artifact") from e
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        input_name = manifest.input_name if manifest.input_name in inputs else inputs[0]
        output_name = manifest.output_name if manifest.output_name in outputs else outputs[0]
        precision = _PRECISION_NAMES.get(manifest.precision, manifest.precision)
        backend = cls(session, input_name, output_name, precision)
        backend._external_data = external  # ORT may use in-memory external data in place: keep it alive
        return backend

    @property
    def device(self) -> str:
        return self._session.get_providers()[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        return self._session.run(list(names), {self._input_name: batch})

    def close(self) -> None:
        self._session = None
