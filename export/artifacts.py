"""Export orchestration: turn a PyTorch classifier into checked, measured artifact directories.

The model is exported to ONNX once. For each format every candidate recipe the requested
precisions need (:mod:`edge_cls.export.recipes`) is built in a staging directory, loaded through
the public runtime API, judged on the check images (never the calibration images) by what its
changed answers are expected to cost (:mod:`edge_cls.quality.acceptance`), recovered where the
plain INT8 recipes miss (:mod:`.recovery`), timed round-robin on this machine, cross-fitted where
the check images came from the calibration folder (:mod:`.crossfit`); :mod:`edge_cls.quality.selection`
then chooses what ships. An FP32 artifact that disagrees with PyTorch on any check image fails the
export. Nothing is published until every target has been built and chosen; then all targets are
swapped into place together, so a failed export leaves every previous artifact as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_cls.artifact.manifest import Manifest
from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.quality.selection import Selection, search_table, select

from .candidates import (
    Candidate,
    ExportContext,
    SearchSettings,
    build_candidate,
    close_candidates,
    judge_candidate,
    require_fp32_parity,
    time_candidates,
    tool_versions,
)
from .crossfit import cross_fit
from .embeddings import EmbeddingSettings, add_embeddings, plan_embeddings
from .formats import FORMATS, ExportTarget
from .publish import OWNER_FILE, WORK_PREFIX, publish_all, refuse_foreign_destinations, remove_abandoned_work
from .recipes import candidates
from .recovery import recover
from .reference import CrossFit, ReferenceSet

logger = logging.getLogger(__name__)

__all__ = ["CrossFit", "ExportedArtifact", "ReferenceSet", "SearchSettings", "export_artifacts", "tool_versions"]


@dataclass
class ExportedArtifact:
    target: ExportTarget
    path: Path
    manifest: Manifest
    seconds: float
    selection: Selection | None = None


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
    search: SearchSettings | None = None,
    taxonomy: Any = None,
    cross_fit: CrossFit | None = None,
    tuning: Any = None,
    embeddings: EmbeddingSettings | None = EmbeddingSettings(),  # noqa: B008 - frozen, so safe to share
    min_precision: float | None = None,
) -> list[ExportedArtifact]:
    """Build, measure and choose every target; publish them together under ``out_dir``.

    An explicit precision ships as ``<format>-<precision>/``, ``auto`` as ``<format>/``. Each
    shipped artifact gets its own calibration fitted on the labelled check images (a temperature,
    or per-class thresholds for multi-label models) and, with ``taxonomy``, the class hierarchy.
    ``cross_fit``: the second fold when the check images are half of the calibration folder.
    ``tuning``: what quantization-aware distillation fine-tunes on (default: the calibration images).
    Multi-label thresholds are F1-optimal, or the lowest reaching ``min_precision``. With ``embeddings``
    (the default) every artifact has a second output, its embeddings (:mod:`edge_cls.export.embeddings`).
    """
    out_dir = Path(out_dir)
    refuse_foreign_destinations(out_dir, targets)
    with prepared(model, spec, labels, out_dir, targets, reference=reference, calibration=calibration,
                  model_name=model_name, task=task, onnx_exporter=onnx_exporter, search=search, taxonomy=taxonomy,
                  cross_fit=cross_fit, tuning=tuning, embeddings=embeddings, min_precision=min_precision) as context:
        results, publish = [], []
        for fmt, group in _by_format(targets).items():
            for artifact, staging in _export_format(context, fmt, group):
                results.append(artifact)
                publish.append((staging, artifact.path))
        publish_all(publish, context.work)
        return results


@contextmanager
def prepared(model: torch.nn.Module, spec: PreprocessSpec, labels: list[str], out_dir: Path,
             targets: list[ExportTarget], *, reference: ReferenceSet, calibration: CalibrationSet | None,
             search: SearchSettings | None, onnx_exporter: str = "dynamo", embeddings: EmbeddingSettings | None = None,
             **context: Any) -> Iterator[ExportContext]:
    """A work directory inside ``out_dir`` (same file system: publishing renames), the FP32 ONNX graph
    exported into it once, and the context every candidate shares; the work is removed afterwards."""
    from .onnx_export import export_onnx

    if any(t.precision == "int8" for t in targets) and calibration is None:
        raise ExportError("INT8 targets need a calibration set (a folder of representative images)")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_work(out_dir)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=out_dir))
    (work / OWNER_FILE).write_text(str(os.getpid()))
    try:
        source = work / "model.onnx"
        started = time.perf_counter()
        plan = plan_embeddings(model, reference.batch, calibration.array if calibration else None, embeddings)
        export_onnx(plan.model if plan else model, spec, labels, source, exporter=onnx_exporter,
                    extra_outputs=plan.outputs if plan else ())
        logger.info("exported ONNX in %.1fs", time.perf_counter() - started)
        yield ExportContext(source=source, work=work, spec=spec, labels=list(labels), reference=reference,
                            calibration=calibration, search=search or SearchSettings(), model=model,
                            embeddings=plan, **context)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _by_format(targets: list[ExportTarget]) -> dict[str, list[ExportTarget]]:
    groups: dict[str, list[ExportTarget]] = {}
    for target in targets:
        groups.setdefault(target.format.name, []).append(target)
    return groups


def measure_format(ctx: ExportContext, fmt: str, precisions: list[str], *, timed: bool = True) -> list[Candidate]:
    """Build, judge, recover, time (unless the device will) and cross-fit every candidate of one format."""
    recipes = candidates(fmt, precisions, transformer=_is_transformer(ctx.source), bf16=_cpu_has_bf16(fmt),
                         only=list(ctx.search.only) if ctx.search.only is not None else None)
    if ctx.calibration is None:
        recipes = [r for r in recipes if not r.int8]
    built = [build_candidate(ctx, recipe) for recipe in recipes]
    try:
        for candidate in built:
            judge_candidate(ctx, candidate)
        require_fp32_parity(built)
        if {"int8", "auto"} & set(precisions):
            built += recover(ctx, fmt, built)
        if timed:
            time_candidates(ctx, built)
        cross_fit(ctx, built, precisions, timed=timed)
    except BaseException:
        close_candidates(built)
        raise
    return built


def _export_format(ctx: ExportContext, fmt: str, targets: list[ExportTarget]) -> list[tuple[ExportedArtifact, Path]]:
    """Measure every candidate of one format, then choose one artifact per target."""
    started = time.perf_counter()
    built = measure_format(ctx, fmt, [t.precision for t in targets])
    try:
        rows = [c.measured for c in built if c.measured is not None]
        results = []
        for target in targets:
            selection = select(rows, requested=target.precision, rule=ctx.search.rule,
                               accept_drop=ctx.search.accept_drop)
            chosen = next(c for c in built if c.measured is selection.chosen)
            staging = _finalize(ctx, chosen, target, selection, ctx.work / f"publish-{target.name}")
            seconds = time.perf_counter() - started
            results.append((ExportedArtifact(target, Path(ctx.work).parent / target.directory, chosen.manifest,
                                             seconds, selection), staging))
            logger.info("%s: shipping %s (%s): %s", target.directory, chosen.recipe.name,
                        chosen.manifest.runtime_precision, selection.reason)
        return results
    finally:
        close_candidates(built)


def _finalize(ctx: ExportContext, chosen: Candidate, target: ExportTarget, selection: Selection, staging: Path) -> Path:
    """Copy the chosen candidate to its own publish directory and write its final manifest."""
    m, manifest = chosen.measured, chosen.manifest
    if m is None or manifest is None:
        raise ExportError(f"candidate {chosen.recipe.name} has no manifest")
    shutil.copytree(chosen.staging, staging)
    manifest.runtime_precision = m.runtime_precision
    ref, e = ctx.reference, m.evidence
    if e is None:
        raise ExportError(f"candidate {chosen.recipe.name} was never judged")
    split = ref.name if ctx.cross_fit is None else f"{ref.name} + {ctx.cross_fit.reference.name} (cross-fitted)"
    manifest.parity = {
        "reference": "pytorch-fp32", "split": split, "images": e.images, "pictures": e.pictures,
        "top1_agreement": e.agreement, "disagreements": e.flips, "confident_images": e.confident_images,
        "confident_agreement": e.confident_agreement, "expected_drop_points": e.expected_drop,
        "drop_low_points": e.drop_low, "drop_high_points": e.drop_high, "kl": e.kl,
        "max_abs_logit_error": m.max_abs_logit_error,
        "mean_abs_logit_error": m.extra.get("mean_abs_logit_error", 0.0), "runtime_precision": m.runtime_precision,
    }
    if e.labelled:
        manifest.accuracy = {"split": split, "images": e.images, "top1": e.top1, "reference_top1": e.reference_top1,
                             "drop_points": e.paired_drop}
    manifest.search = search_table(selection, rule=ctx.search.rule, check_name=split, check_images=e.images,
                                   check_pictures=e.pictures, requested=target.precision,
                                   cross_fitted=ctx.cross_fit is not None)
    manifest.accepted_drop = selection.accepted_drop
    if chosen.logits is not None:
        _calibrate(manifest, chosen.logits, ref, ctx.min_precision)
    manifest.taxonomy = ctx.taxonomy.to_dict() if ctx.taxonomy is not None else None
    from .preprocess_choice import choose_placement  # where preprocessing runs: host, or in the graph

    choose_placement(staging, manifest, chosen.recipe.format, ref.images, ctx.search.placement)
    if ctx.embeddings is not None and chosen.recipe.distill is None:  # distillation exports the logits only
        add_embeddings(manifest, staging, chosen.classifier, ctx.embeddings, ref.batch, ref.name)
    manifest.save(staging)
    return staging


def _calibrate(manifest: Manifest, logits: np.ndarray, ref: ReferenceSet, min_precision: float | None = None) -> None:
    """Fit the artifact's own calibration on the check images (held out from training and from
    calibration): a temperature for single-label models, a threshold per class for multi-label ones;
    and summarise its answers there, for drift checks on production data."""
    from edge_cls.predictions import softmax
    from edge_cls.quality.confidence import calibrate, class_thresholds
    from edge_cls.quality.drift import summarize

    targets = ref.targets
    if manifest.task == "multi_label":
        if targets is not None and targets.ndim == 2:
            thresholds = class_thresholds(logits, targets, precision=min_precision)
            rule = "f1" if min_precision is None else f"precision>={min_precision:g}"
            manifest.calibration = {"method": "thresholds", "rule": rule, "thresholds": thresholds.tolist(),
                                    "fitted_on": ref.name, "images": int(len(targets))}
        return
    temperature = 1.0
    if targets is not None and targets.ndim == 1:
        fit = calibrate(logits, targets, split=ref.name)
        manifest.calibration = fit.to_dict()
        temperature = fit.temperature
    manifest.summary = summarize(softmax(logits, temperature), targets if targets is not None and targets.ndim == 1
                                 else None, split=ref.name)


def _is_transformer(onnx_path: Path) -> bool:
    """A graph with Softmax inside and several MatMuls is attention: NNCF then uses its transformer scheme."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    return ops.count("MatMul") >= 4 and "Softmax" in ops[:-1]


def _cpu_has_bf16(fmt: str) -> bool:
    """Whether the format's backend computes bf16 natively on this machine's CPU (else a bf16
    candidate would only repeat FP32)."""
    from edge_cls.errors import BackendUnavailableError
    from edge_cls.runtimes import backend_class

    try:
        return "bf16" in backend_class(FORMATS[fmt].backend).native_precisions("CPU")
    except BackendUnavailableError:  # a format only the device runs (its bundle sources are built here)
        return False
