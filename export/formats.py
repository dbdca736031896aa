"""The export table: every format, the precisions it supports, and the runtime that runs it.

Arguments are validated against this table before any work starts (as Ultralytics' export
table does), so a typo fails in a second, not after calibration.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from edge_cls.errors import BackendUnavailableError, ConfigError


@dataclass(frozen=True)
class Format:
    name: str
    backend: str  # the runtime backend that runs it
    suffix: str  # the model file's suffix
    precisions: tuple[str, ...]
    device: str  # where it runs
    extra: str  # the pip extra that builds it
    packages: tuple[str, ...]  # what building it imports

    def missing_packages(self, precision: str) -> list[str]:
        needed = [*self.packages, *(["nncf"] if self.name == "openvino" and precision == "int8" else [])]
        return [name for name in needed if importlib.util.find_spec(name) is None]


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", "onnxruntime", ".onnx", ("fp32", "fp16", "int8"), "CPU/GPU", "export", ("onnx", "onnxruntime")),
    "openvino": Format("openvino", "openvino", ".xml", ("fp32", "fp16", "int8"), "CPU/GPU/NPU", "export", ("onnx", "openvino")),
    "tensorrt": Format(
        "tensorrt", "tensorrt", ".engine", ("fp32", "fp16", "int8"), "NVIDIA GPU", "tensorrt", ("onnx", "onnxruntime", "tensorrt")
    ),
}


@dataclass(frozen=True)
class ExportTarget:
    """One artifact to build: a format at a precision, e.g. ``openvino-int8``."""

    format: Format
    precision: str

    @property
    def name(self) -> str:
        return f"{self.format.name}-{self.precision}"

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8"


def resolve_targets(formats: Iterable[str], precisions: Iterable[str]) -> list[ExportTarget]:
    """Every (format, precision) pair asked for, validated against :data:`FORMATS`."""
    formats, precisions = list(formats), list(precisions)
    if not formats or not precisions:
        raise ConfigError("give at least one format and one precision")
    targets = []
    for name in formats:
        if name not in FORMATS:
            raise ConfigError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
        fmt = FORMATS[name]
        for precision in precisions:
            if precision not in fmt.precisions:
                raise ConfigError(
                    f"{name} cannot export {precision!r}; it supports {', '.join(fmt.precisions)}"
                )
            missing = fmt.missing_packages(precision)
            if missing:
                raise BackendUnavailableError(
                    f"{name} {precision} export needs {', '.join(missing)}: pip install 'edge-cls[{fmt.extra}]'"
                    + (" on a machine with an NVIDIA GPU" if name == "tensorrt" else "")
                )
            targets.append(ExportTarget(fmt, precision))
    return targets


def format_table() -> str:
    """The export table as text, for ``edge-cls export --help``."""
    rows = [f"  {f.name:<9} {f.suffix:<8} {', '.join(f.precisions):<17} {f.device}" for f in FORMATS.values()]
    return "\n".join(["  format    file     precisions        runs on", *rows])
