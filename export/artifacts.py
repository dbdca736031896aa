"""Export orchestration: turn a PyTorch classifier into checked artifact directories.

Every artifact is built in a staging directory, checked against the PyTorch reference through
the public runtime API (top-1 agreement, logit error, accuracy), described by its manifest, and
only then renamed into place. An FP32 artifact that disagrees with PyTorch on any reference
image fails the export and leaves any previous artifact untouched.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edge_cls._fileio import atomic_directory
from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.manifest import Manifest, describe_files
from edge_cls.preprocess import PreprocessSpec

from .formats import BuildJob, ExportTarget

logger = logging.getLogger(__name__)

TOOLS = ("edge-cls", "torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "onnxslim", "tensorrt")
MIN_INT8_AGREEMENT = 0.99


@dataclass(frozen=True)
class ReferenceSet:
    """Preprocessed images, the PyTorch logits on them, and (optionally) their true labels."""

    batch: np.ndarray
    logits: np.ndarray
    targets: np.ndarray | None = None
    name: str = "test"

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, batch: np.ndarray, targets: np.ndarray | None = None, name: str = "test"
    ) -> ReferenceSet:
        from edge_cls.training.models import predict_logits

        return cls(batch, predict_logits(model, batch), targets, name)


@dataclass
class ExportedArtifact:
    target: ExportTarget
    path: Path
    manifest: Manifest
    seconds: float


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def export_artifacts(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    labels: list[str],
    out_dir: str | Path,
    targets: list[ExportTarget],
    *,
    reference: ReferenceSet,
    calibration: CalibrationSet | None = None,
    model_name: str = "",
    task: str = "single_label",
    onnx_exporter: str = "dynamo",
) -> list[ExportedArtifact]:
    """Build each target under ``out_dir/<format>-<precision>/`` and check it against ``reference``."""
    if any(t.needs_calibration for t in targets) and calibration is None:
        raise ExportError("INT8 targets need a calibration set (a folder of representative images)")
    from .onnx_export import export_onnx

    out_dir = Path(out_dir)
    results = []
    with tempfile.TemporaryDirectory(prefix="edge-cls-export-") as work:
        source = Path(work) / "model.onnx"
        started = time.perf_counter()
        export_onnx(model, spec, labels, source, exporter=onnx_exporter)
        onnx_seconds = time.perf_counter() - started
        logger.info("exported ONNX in %.1fs", onnx_seconds)
        for target in targets:
            started = time.perf_counter()
            path = out_dir / target.name
            with atomic_directory(path) as staging:
                job = BuildJob(source, staging, target.precision, spec, list(labels), calibration)
                files, options = target.format.build_function()(job)
                manifest = Manifest(
                    backend=target.format.backend, precision=target.precision, model_file=files[0],
                    spec=spec, labels=list(labels), files=describe_files(staging, files), task=task,
                    model_name=model_name, runtime_options=options, tools=tool_versions(),
                )
                manifest.save(staging)
                _check(target, staging, manifest, reference)
                manifest.save(staging)
            seconds = time.perf_counter() - started  # the shared ONNX export is logged on its own
            results.append(ExportedArtifact(target, path, manifest, seconds))
            logger.info("%s: %s in %.1fs", target.name, manifest.parity, seconds)
    return results


def _check(target: ExportTarget, staging: Path, manifest: Manifest, reference: ReferenceSet) -> None:
    """Run the artifact through the public runtime API and record parity and accuracy."""
    from edge_cls.runtimes import load

    with load(staging) as classifier:
        logits = classifier.logits(reference.batch)
        manifest.runtime_precision = classifier.precision
    agree = logits.argmax(1) == reference.logits.argmax(1)
    manifest.parity = {
        "reference": "pytorch-fp32",
        "split": reference.name,
        "images": int(len(agree)),
        "top1_agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "max_abs_logit_error": float(np.abs(logits - reference.logits).max()),
        "mean_abs_logit_error": float(np.abs(logits - reference.logits).mean()),
        "runtime_precision": manifest.runtime_precision,
    }
    if reference.targets is not None:
        manifest.accuracy = {
            "split": reference.name,
            "images": int(len(reference.targets)),
            "top1": float((logits.argmax(1) == reference.targets).mean()),
        }
    if target.precision == "fp32" and not agree.all():
        raise ExportError(
            f"{target.name} disagrees with PyTorch on {int((~agree).sum())} of {len(agree)} {reference.name} images "
            f"(max logit error {manifest.parity['max_abs_logit_error']:.3g}, ran in {manifest.runtime_precision}); "
            "the artifact was not written"
        )
    if target.precision == "int8" and agree.mean() < MIN_INT8_AGREEMENT:
        logger.warning(
            "%s agrees with PyTorch on only %.1f%% of %s images (target: %.0f%%)",
            target.name, 100 * agree.mean(), reference.name, 100 * MIN_INT8_AGREEMENT,
        )
