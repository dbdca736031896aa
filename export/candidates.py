"""Candidates of the precision search: build one recipe into its own staging directory, load it
through the public runtime API, judge it on the check images by the acceptance rule, time them all
round-robin. :mod:`edge_cls.export.artifacts` orchestrates; :mod:`.recovery` and :mod:`.crossfit`
add candidates and evidence."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.artifact.manifest import Manifest, describe_files
from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ArtifactError, ExportError
from edge_cls.measure.timing import round_robin
from edge_cls.preprocess import PreprocessSpec
from edge_cls.quality.acceptance import AcceptanceRule, judge
from edge_cls.quality.selection import Measured

from .formats import FORMATS, BuildJob
from .recipes import Distillation, Recipe, check_names
from .reference import CrossFit, ReferenceSet

logger = logging.getLogger(__name__)

TOOLS = ("edge-cls", "torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "onnxslim", "tensorrt")
RESTORE_MODES = ("when-needed", "always", "never")


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How candidates are judged and timed."""

    rule: AcceptanceRule = field(default_factory=AcceptanceRule)
    accept_drop: bool = False  # ship an explicitly requested precision that misses the rule, marked
    rounds: int = 7  # round-robin timing rounds
    block: int = 20  # batch-1 calls per candidate per round
    max_timing_seconds: float = 60.0  # per format; blocks shrink for large models
    only: tuple[str, ...] | None = None  # restrict the low-precision recipes (e.g. tests, benchmarks)
    restore: str = "when-needed"  # build the restoring recipes when no plain INT8 one meets the rule; always; never
    distill: str = "when-needed"  # the same for quantization-aware distillation (the costliest recovery)
    distill_budget: Distillation | None = None  # replaces the recipes' quantization-aware distillation settings
    placement: Any = None  # edge_cls.export.preprocess_choice.PlacementSettings (None: its defaults)

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", check_names(self.only))
        for name in ("restore", "distill"):
            if getattr(self, name) not in RESTORE_MODES:
                raise ExportError(f"{name} must be one of {RESTORE_MODES}, got {getattr(self, name)!r}")

    def recovery_mode(self, recipe: Recipe) -> str:
        """When a restoring recipe is built: ``distill`` for quantization-aware distillation, else ``restore``."""
        return self.distill if recipe.distill is not None else self.restore


@dataclass
class ExportContext:
    """What every candidate of one export shares."""

    source: Path  # the FP32 ONNX graph every format starts from
    work: Path
    spec: PreprocessSpec
    labels: list[str]
    reference: ReferenceSet
    calibration: CalibrationSet | None
    search: SearchSettings
    task: str = "single_label"
    model_name: str = ""
    taxonomy: Any = None  # edge_cls.taxonomy.Taxonomy
    model: Any = None  # the float PyTorch model (quantization-aware distillation fine-tunes a copy)
    tuning: Any = None  # edge_cls.export.qad.TuningData; None: the calibration images
    cross_fit: CrossFit | None = None
    embeddings: Any = None  # edge_cls.export.embeddings.EmbeddingPlan: the second output every artifact carries
    min_precision: float | None = None  # multi-label thresholds: the lowest reaching this precision
    deferred: bool = False  # building a candidate bundle: formats built on the device write their sources
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    recipe: Recipe
    staging: Path
    manifest: Manifest | None = None
    classifier: Any = None
    measured: Measured | None = None
    logits: np.ndarray | None = None  # on the check images
    second_fold: Path | None = None  # cross-fitting: the model calibrated on the other half (kept for a bundle)
    second_logits: np.ndarray | None = None  # its logits on the other half


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_candidate(ctx: ExportContext, recipe: Recipe, *, calibration: CalibrationSet | None = None,
                    staging_name: str | None = None) -> Candidate:
    """Build one candidate in its own staging directory (calibrated on ``calibration``, by default the
    export's); a failure becomes the candidate's error, except for FP32, which must build."""
    if recipe.distill is not None and ctx.search.distill_budget is not None:
        recipe = replace(recipe, distill=ctx.search.distill_budget)
    staging = ctx.work / (staging_name or recipe.name)
    staging.mkdir()
    candidate = Candidate(recipe, staging)
    measured = Measured(name=f"{recipe.format}-{recipe.precision}", recipe=recipe.name, precision=recipe.precision)
    candidate.measured = measured
    started = time.perf_counter()
    try:
        job = BuildJob(ctx.source, staging, recipe.precision, ctx.spec, ctx.labels,
                       calibration or ctx.calibration, recipe=recipe, max_drop_fraction=ctx.search.rule.max_drop / 100,
                       model=ctx.model, tuning=ctx.tuning if calibration is None else None, shared=ctx.shared)
        files, options = FORMATS[recipe.format].build_function(deferred=ctx.deferred)(job)
        open_candidate(ctx, candidate, files, options)
        run = ctx.shared.pop("last_distillation", None)
        if run is not None:
            measured.extra.update(run.to_dict())
    except (ExportError, ArtifactError, OSError, RuntimeError, ValueError) as e:
        if recipe.precision == "fp32":
            raise
        measured.error = " ".join(f"{type(e).__name__}: {e}".split())[:500]  # one line: it goes into the manifest
        logger.warning("candidate %s failed: %s", recipe.name, measured.error)
    measured.build_seconds = time.perf_counter() - started
    return candidate


def candidate_manifest(ctx: ExportContext, recipe: Recipe, staging: Path, files: list[str],
                       options: dict[str, Any]) -> Manifest:
    """The one manifest of a built candidate (the model file first in ``files``); the search's figures
    are added to the shipped one when it is finalised."""
    return Manifest(
        backend=FORMATS[recipe.format].host_backend(deferred=ctx.deferred), precision=recipe.precision,
        model_file=files[0], spec=ctx.spec,
        labels=ctx.labels, files=describe_files(staging, files), task=ctx.task, model_name=ctx.model_name,
        runtime_options=options, recipe=recipe.name, tools=tool_versions(),
    )


def open_candidate(ctx: ExportContext, candidate: Candidate, files: list[str], options: dict[str, Any]) -> None:
    """Write the candidate's manifest and load it through the public runtime API."""
    from edge_cls.runtimes import load

    candidate.manifest = candidate_manifest(ctx, candidate.recipe, candidate.staging, files, options)
    candidate.manifest.save(candidate.staging)
    candidate.classifier = load(candidate.staging)
    if candidate.measured is not None:
        candidate.measured.runtime_precision = candidate.classifier.precision


def judge_candidate(ctx: ExportContext, candidate: Candidate) -> None:
    """The candidate's evidence on the check images and the acceptance rule's judgement of it."""
    m = candidate.measured
    if candidate.classifier is None or m is None:
        return
    logits = candidate.logits = candidate.classifier.logits(ctx.reference.batch)
    m.evidence = ctx.reference.evidence(logits, ctx.search.rule)
    m.judgement = judge(m.evidence, ctx.search.rule)
    m.max_abs_logit_error = float(np.abs(logits - ctx.reference.logits).max())
    m.extra["mean_abs_logit_error"] = float(np.abs(logits - ctx.reference.logits).mean())


def require_fp32_parity(built: list[Candidate]) -> None:
    for candidate in built:
        m = candidate.measured
        if candidate.recipe.precision == "fp32" and m is not None and m.agreement < 1.0:
            raise ExportError(
                f"{m.name} disagrees with PyTorch on {100 * (1 - m.agreement):.1f}% of the check images "
                f"(max logit error {m.max_abs_logit_error:.3g}, ran in {m.runtime_precision}); the artifact was not "
                "written"
            )


def time_candidates(ctx: ExportContext, built: list[Candidate]) -> None:
    """Round-robin batch-1 timing of every working candidate of one format."""
    one = np.ascontiguousarray(ctx.reference.batch[:1])
    calls = {c.recipe.name: (lambda clf=c.classifier: clf.logits(one)) for c in built if c.classifier is not None}
    timings = round_robin(calls, rounds=ctx.search.rounds, block=ctx.search.block,
                          max_seconds=ctx.search.max_timing_seconds)
    for candidate in built:
        if candidate.measured is not None and candidate.recipe.name in timings:
            candidate.measured.timing = timings[candidate.recipe.name]


def close_candidates(built: list[Candidate]) -> None:
    for candidate in built:
        if candidate.classifier is not None:
            candidate.classifier.close()
            candidate.classifier = None
