"""Build side: ONNX, ONNX Runtime INT8/FP16, OpenVINO IR (+NNCF INT8), TensorRT; parity checks.

Heavy libraries (torch, onnx, openvino, nncf, tensorrt) load on first use: importing this
package, or its export table in :mod:`edge_cls.export.formats`, stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

from edge_cls.quality.acceptance import AcceptanceRule

from .formats import AUTO, FORMATS, ExportTarget, format_table, resolve_targets

_LAZY = {
    "ReferenceSet": "reference",
    "CrossFit": "reference",
    "ExportedArtifact": "artifacts",
    "SearchSettings": "candidates",
    "export_artifacts": "artifacts",
    "tool_versions": "candidates",
    "EmbeddingSettings": "embeddings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUTO", "FORMATS", "AcceptanceRule", "ExportTarget", "format_table", "resolve_targets", *_LAZY]
