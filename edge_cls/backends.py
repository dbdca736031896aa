"""The runtime backends edge-cls knows: one table, read by the manifest (which backend names are
valid), the runtime registry (how to load each one) and the export table (which backend runs
each format). Pure data: nothing here imports a backend library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendInfo:
    name: str
    target: str  # "module:Class" of its runtime wrapper
    package: str  # the import name of the library it needs
    install: str  # how to get it


BACKENDS: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo("onnxruntime", "edge_cls.runtimes.onnxruntime_backend:OnnxRuntimeBackend", "onnxruntime",
                    "pip install 'edge-cls[onnxruntime]'"),
        BackendInfo("openvino", "edge_cls.runtimes.openvino_backend:OpenVINOBackend", "openvino",
                    "pip install 'edge-cls[openvino]'"),
        BackendInfo("tensorrt", "edge_cls.runtimes.tensorrt_backend:TensorRTBackend", "tensorrt",
                    "pip install 'edge-cls[tensorrt]' (NVIDIA GPU only)"),
    )
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
