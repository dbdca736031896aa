"""The export table: every format, its precisions, the runtime that runs it, the builder that
writes it and how to install what that builder needs.

Arguments are validated against this table before any work starts (as Ultralytics' export
table does), so a typo fails in a second, not after calibration. Builders are named as
``"module:function"`` and imported only when their format is built.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_cls.backends import BACKENDS
from edge_cls.errors import BackendUnavailableError, ConfigError
from edge_cls.quality.selection import AUTO


@dataclass(frozen=True)
class Format:
    name: str
    backend: str  # the runtime backend that runs it (a key of edge_cls.backends.BACKENDS)
    suffix: str  # the model file's suffix
    precisions: tuple[str, ...]
    device: str  # where it runs
    builder: str  # "module:function" that writes its model files, see BuildJob
    packages: tuple[str, ...]  # what building it imports
    install: str  # how to get those packages
    precision_packages: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra needs per precision
    deferred_builder: str | None = None  # for a candidate bundle: writes what the device builds the format from
    deferred_backend: str | None = None  # the backend that checks that on the build host
    deferred_packages: tuple[str, ...] = ()
    # Preprocessing in the graph: "module:function(model, out, spec, placement)" that rebuilds a model file
    # to take uint8 pixels, and the graph resize to measure there ("" where the format has neither).
    ingraph: str = ""
    graph_resize: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"format {self.name} names an unknown backend {self.backend!r}")

    def missing_packages(self, precision: str, *, deferred: bool = False) -> list[str]:
        if deferred and self.deferred_builder is not None:
            needed = list(self.deferred_packages)
        else:
            needed = [*self.packages, *self.precision_packages.get(precision, ())]
        return [name for name in needed if importlib.util.find_spec(name) is None]

    def build_function(self, *, deferred: bool = False) -> Callable[[BuildJob], tuple[list[str], dict[str, Any]]]:
        module, function = (self.deferred_builder if deferred and self.deferred_builder else self.builder).split(":")
        return getattr(importlib.import_module(module), function)

    def host_backend(self, *, deferred: bool = False) -> str:
        """The backend that loads what the builder writes on this machine."""
        return self.deferred_backend if deferred and self.deferred_backend else self.backend


@dataclass(frozen=True)
class BuildJob:
    """What a builder gets: the FP32 ONNX source, where to write, and what the target needs.
    A builder returns the names of the files it wrote (model file first) and the runtime options
    the manifest stores."""

    source: Path  # the FP32 ONNX file every format starts from
    staging: Path  # the artifact directory being built
    precision: str
    spec: Any  # PreprocessSpec
    labels: list[str]
    calibration: Any = None  # CalibrationSet, for INT8
    recipe: Any = None  # edge_cls.export.recipes.Recipe; None: the format's default for the precision
    max_drop_fraction: float = 0.003  # the acceptance bar, for recipes that restore accuracy themselves
    model: Any = None  # the float PyTorch model, for recipes that fine-tune it (quantization-aware distillation)
    tuning: Any = None  # edge_cls.export.qad.TuningData: what such a recipe fine-tunes on
    shared: dict[str, Any] = field(default_factory=dict)  # made once per export, used by several recipes


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "onnxruntime", ".onnx", ("fp32", "fp16", "int8"), "CPU/GPU",
               "edge_cls.export.onnxruntime_export:build", ("onnx", "onnxruntime"), "pip install 'edge-cls[export]'",
               ingraph="edge_cls.export.ingraph_onnx:rebuild", graph_resize="cubic"),
        Format("openvino", "openvino", ".xml", ("fp32", "fp16", "bf16", "int8"), "CPU/GPU/NPU",
               "edge_cls.export.openvino_export:build", ("onnx", "openvino"), "pip install 'edge-cls[export]'",
               precision_packages={"int8": ("nncf",), "auto": ("nncf",)},
               ingraph="edge_cls.export.ingraph_openvino:rebuild", graph_resize="bicubic-pillow"),
        Format("tensorrt", "tensorrt", ".engine", ("fp32", "fp16", "int8"), "NVIDIA GPU",
               "edge_cls.export.tensorrt_export:build", ("onnx", "onnxruntime", "tensorrt"),
               "pip install 'edge-cls[tensorrt]' on a machine with an NVIDIA GPU",
               deferred_builder="edge_cls.export.tensorrt_export:build_deferred", deferred_backend="onnxruntime",
               deferred_packages=("onnx", "onnxruntime")),
    )
}




@dataclass(frozen=True)
class ExportTarget:
    """One artifact to build: a format at a precision (``openvino-int8``), or ``auto`` (``openvino``:
    the precision search chooses)."""

    format: Format
    precision: str

    @property
    def name(self) -> str:
        return f"{self.format.name}-{self.precision}"

    @property
    def directory(self) -> str:
        """Where it ships under the output directory."""
        return self.format.name if self.precision == AUTO else self.name

    @property
    def needs_calibration(self) -> bool:
        return self.precision in ("int8", AUTO)


def resolve_targets(formats: Iterable[str], precisions: Iterable[str], *, deferred: bool = False) -> list[ExportTarget]:
    """Every (format, precision) pair asked for, validated against :data:`FORMATS`; ``deferred``: for a
    candidate bundle (a format built on the device needs only what writes its sources here)."""
    formats, precisions = list(formats), list(precisions)
    if not formats or not precisions:
        raise ConfigError("give at least one format and one precision")
    targets = []
    for name in formats:
        if name not in FORMATS:
            raise ConfigError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
        fmt = FORMATS[name]
        for precision in dict.fromkeys(precisions):
            if precision not in (*fmt.precisions, AUTO):
                raise ConfigError(
                    f"{name} cannot export {precision!r}; it supports {', '.join(fmt.precisions)} or {AUTO}"
                )
            missing = fmt.missing_packages(precision, deferred=deferred)
            if missing:
                raise BackendUnavailableError(f"{name} {precision} export needs {', '.join(missing)}: {fmt.install}")
            targets.append(ExportTarget(fmt, precision))
    return targets


def format_table() -> str:
    """The export table as text, for ``edge-cls export --help``."""
    rows = [f"  {f.name:<9} {f.suffix:<8} {', '.join(f.precisions):<22} {f.device}" for f in FORMATS.values()]
    return "\n".join(["  format    file     precisions             runs on", *rows,
                      "  auto (the default) ships, per format, the fastest precision that keeps the answer"])
