"""Export orchestration: turn a PyTorch classifier into checked, measured artifact directories.

The model is exported to ONNX once. For each format every candidate recipe the requested
precisions need (:mod:`edge_cls.export.recipes`) is built in a staging directory, loaded through
the public runtime API, scored on the check images (never the calibration images), and timed
round-robin on this machine; :mod:`edge_cls.export.search` then chooses what ships. An FP32
artifact that disagrees with PyTorch on any check image fails the export. Nothing is published
until every target has been built and chosen; then all targets are swapped into place together,
so a failed export leaves every previous artifact as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_cls.artifact.manifest import Manifest, describe_files
from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ArtifactError, ConfigError, ExportError
from edge_cls.measure.timing import round_robin
from edge_cls.preprocess import PreprocessSpec

from .embeddings import EmbeddingPlan, EmbeddingSettings, add_embeddings, plan_embeddings
from .formats import FORMATS, BuildJob, ExportTarget
from .publish import OWNER_FILE, WORK_PREFIX, publish_all, refuse_foreign_destinations, remove_abandoned_work
from .recipes import Recipe, candidates
from .search import AUTO, AccuracyBar, Measured, Selection, score, search_table, select

logger = logging.getLogger(__name__)

TOOLS = ("edge-cls", "torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "onnxslim", "tensorrt")



@dataclass(frozen=True)
class ReferenceSet:
    """The check images: preprocessed, the PyTorch logits on them, and (optionally) their true
    labels. They must never be calibration images, or INT8 would be judged on what it was fitted to."""

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


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How candidates are judged and timed."""

    bar: AccuracyBar = field(default_factory=AccuracyBar)
    accept_drop: bool = False  # ship an explicitly requested precision that misses the bar, marked
    rounds: int = 7  # round-robin timing rounds
    block: int = 20  # batch-1 calls per candidate per round
    max_timing_seconds: float = 60.0  # per format; blocks shrink for large models
    only: tuple[str, ...] | None = None  # restrict the low-precision recipes (e.g. tests, benchmarks)
    restore: bool = True  # build accuracy-restoring recipes when no plain INT8 recipe meets the bar

    def __post_init__(self) -> None:
        from .recipes import RECIPES

        unknown = sorted(set(self.only or ()) - set(RECIPES))
        if unknown:
            raise ConfigError(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")


@dataclass
class ExportedArtifact:
    target: ExportTarget
    path: Path
    manifest: Manifest
    seconds: float
    selection: Selection | None = None


@dataclass
class _Candidate:
    recipe: Recipe
    staging: Path
    manifest: Manifest | None = None
    classifier: Any = None
    measured: Measured | None = None
    logits: np.ndarray | None = None  # on the check images


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
    search: SearchSettings | None = None,
    taxonomy: Any = None,
    embeddings: EmbeddingSettings | None = EmbeddingSettings(),  # noqa: B008 - frozen, so safe to share
    min_precision: float | None = None,
) -> list[ExportedArtifact]:
    """Build, measure and choose every target; publish them together under ``out_dir``.

    An explicit precision ships as ``<format>-<precision>/``, ``auto`` as ``<format>/``. Each
    shipped artifact gets its own calibration fitted on the labelled check images (a temperature,
    or per-class thresholds for multi-label models: F1-optimal, or the lowest reaching ``min_precision``)
    and, with ``taxonomy``, the class hierarchy. With ``embeddings`` (the default) every artifact has a
    second output, its embeddings (:mod:`edge_cls.export.embeddings`).
    """
    from .onnx_export import export_onnx

    search = search or SearchSettings()
    out_dir = Path(out_dir)
    if any(t.precision == "int8" for t in targets) and calibration is None:
        raise ExportError("INT8 targets need a calibration set (a folder of representative images)")
    refuse_foreign_destinations(out_dir, targets)
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
        context = _Context(source=source, work=work, spec=spec, labels=list(labels), task=task, model_name=model_name,
                           reference=reference, calibration=calibration, search=search, taxonomy=taxonomy,
                           embeddings=plan, min_precision=min_precision)
        results, publish = [], []
        for fmt, group in _by_format(targets).items():
            for artifact, staging in _export_format(context, fmt, group):
                results.append(artifact)
                publish.append((staging, artifact.path))
        publish_all(publish, work)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Context:
    source: Path
    work: Path
    spec: PreprocessSpec
    labels: list[str]
    task: str
    model_name: str
    reference: ReferenceSet
    calibration: CalibrationSet | None
    search: SearchSettings
    taxonomy: Any = None  # edge_cls.taxonomy.Taxonomy
    embeddings: EmbeddingPlan | None = None
    min_precision: float | None = None  # multi-label thresholds: the lowest reaching this precision


def _by_format(targets: list[ExportTarget]) -> dict[str, list[ExportTarget]]:
    groups: dict[str, list[ExportTarget]] = {}
    for target in targets:
        groups.setdefault(target.format.name, []).append(target)
    return groups


def _export_format(ctx: _Context, fmt: str, targets: list[ExportTarget]) -> list[tuple[ExportedArtifact, Path]]:
    """Build and measure every candidate of one format, then choose one artifact per target."""
    started = time.perf_counter()
    precisions = [t.precision for t in targets]
    recipes = candidates(fmt, precisions, transformer=_is_transformer(ctx.source), bf16=_cpu_has_bf16(fmt),
                         only=list(ctx.search.only) if ctx.search.only is not None else None)
    if ctx.calibration is None:
        recipes = [r for r in recipes if not r.int8]
    built = [_build(ctx, recipe) for recipe in recipes]
    try:
        for candidate in built:
            _measure_accuracy(ctx, candidate)
        _require_fp32_parity(built)
        if ctx.search.restore and ctx.calibration is not None and ({"int8", AUTO} & set(precisions)):
            built += _restore_accuracy(ctx, fmt, built)
        _time(ctx, built)
        rows = [c.measured for c in built if c.measured is not None]
        results = []
        for target in targets:
            selection = select(rows, requested=target.precision, bar=ctx.search.bar,
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
        for candidate in built:
            if candidate.classifier is not None:
                candidate.classifier.close()


def _build(ctx: _Context, recipe: Recipe) -> _Candidate:
    """Build one candidate in its own staging directory; a failure becomes the candidate's error."""

    staging = ctx.work / recipe.name
    staging.mkdir()
    candidate = _Candidate(recipe, staging)
    measured = Measured(name=f"{recipe.format}-{recipe.precision}", recipe=recipe.name, precision=recipe.precision)
    candidate.measured = measured
    started = time.perf_counter()
    try:
        job = BuildJob(ctx.source, staging, recipe.precision, ctx.spec, ctx.labels, ctx.calibration, recipe=recipe,
                       max_agreement_drop=_agreement_drop(ctx.search.bar))
        files, options = FORMATS[recipe.format].build_function()(job)
        _open_candidate(ctx, candidate, files, options)
    except (ExportError, ArtifactError, OSError, RuntimeError, ValueError) as e:
        if recipe.precision == "fp32":
            raise
        measured.error = f"{type(e).__name__}: {e}"
        logger.warning("candidate %s failed: %s", recipe.name, measured.error)
    measured.build_seconds = time.perf_counter() - started
    return candidate


def candidate_manifest(ctx: _Context, recipe: Recipe, staging: Path, files: list[str],
                       options: dict[str, Any]) -> Manifest:
    """The one manifest of a built candidate (the model file first in ``files``); the search's figures
    are added to the shipped one by :func:`_finalize`."""
    return Manifest(
        backend=FORMATS[recipe.format].backend, precision=recipe.precision, model_file=files[0], spec=ctx.spec,
        labels=ctx.labels, files=describe_files(staging, files), task=ctx.task, model_name=ctx.model_name,
        runtime_options=options, recipe=recipe.name, tools=tool_versions(),
    )


def _open_candidate(ctx: _Context, candidate: _Candidate, files: list[str], options: dict[str, Any]) -> None:
    """Write the candidate's manifest and load it through the public runtime API."""
    from edge_cls.runtimes import load

    candidate.manifest = candidate_manifest(ctx, candidate.recipe, candidate.staging, files, options)
    candidate.manifest.save(candidate.staging)
    candidate.classifier = load(candidate.staging)
    if candidate.measured is not None:
        candidate.measured.runtime_precision = candidate.classifier.precision


def _measure_accuracy(ctx: _Context, candidate: _Candidate) -> None:
    if candidate.classifier is None or candidate.measured is None:
        return
    logits = candidate.logits = candidate.classifier.logits(ctx.reference.batch)
    for key, value in score(logits, ctx.reference.logits, ctx.reference.targets).items():
        setattr(candidate.measured, key, value)
    candidate.measured.extra["mean_abs_logit_error"] = float(np.abs(logits - ctx.reference.logits).mean())


def _require_fp32_parity(built: list[_Candidate]) -> None:
    for candidate in built:
        m = candidate.measured
        if candidate.recipe.precision == "fp32" and m is not None and m.agreement < 1.0:
            raise ExportError(
                f"{m.name} disagrees with PyTorch on {100 * (1 - m.agreement):.1f}% of the check images "
                f"(max logit error {m.max_abs_logit_error:.3g}, ran in {m.runtime_precision}); the artifact was not "
                "written"
            )


def _restore_accuracy(ctx: _Context, fmt: str, built: list[_Candidate]) -> list[_Candidate]:
    """When no INT8 candidate meets the bar, build the accuracy-restoring recipes (bounded)."""
    from .recipes import RECIPES, RESTORING

    int8 = [c.measured for c in built if c.recipe.int8 and c.measured is not None]
    if not int8 or any(m.meets(ctx.search.bar) for m in int8):
        return []
    extra = []
    for name in sorted(RESTORING):
        recipe = RECIPES[name]
        if recipe.format != fmt or (ctx.search.only is not None and name not in ctx.search.only):
            continue
        logger.info("no INT8 recipe meets the bar: trying %s", name)
        if name == "ort-restore":
            candidate = _restore_onnx(ctx, built)
        else:
            candidate = _build(ctx, recipe)
            _measure_accuracy(ctx, candidate)
        if candidate is not None:
            extra.append(candidate)
    return extra


def _restore_onnx(ctx: _Context, built: list[_Candidate]) -> _Candidate | None:
    """ONNX Runtime: the most accurate ORT-quantizer recipe with its worst layers back in float."""
    from dataclasses import replace

    from .onnxruntime_export import restore_accuracy

    tried = [c for c in built if c.recipe.ort is not None and c.measured is not None and not c.measured.error]
    if not tried or ctx.calibration is None:
        return None
    base = max(tried, key=lambda c: c.measured.agreement)  # type: ignore[union-attr]
    fp32 = next(c for c in built if c.recipe.precision == "fp32")
    calibration_reference = fp32.classifier.logits(ctx.calibration.array).argmax(1)
    need = 1.0 - _agreement_drop(ctx.search.bar)

    def meets_bar(path: Path) -> bool:  # judged on calibration images: the check images stay unseen
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: ctx.calibration.array})[0]
        return float((logits.argmax(1) == calibration_reference).mean()) >= need

    recipe = replace(base.recipe, name=f"ort-restore({base.recipe.name})", summary=base.recipe.summary
                     + "; the layers that hurt the answer most kept in float")
    staging = ctx.work / recipe.name
    staging.mkdir()
    candidate = _Candidate(recipe, staging)
    candidate.measured = Measured(name="onnx-int8", recipe=recipe.name, precision="int8")
    started = time.perf_counter()
    result = restore_accuracy(ctx.source, staging / "model.onnx", ctx.calibration, base.recipe.ort, meets_bar)
    candidate.measured.build_seconds = time.perf_counter() - started
    if result is None:
        candidate.measured.error = "restoring up to 16 layers to float did not meet the bar on the calibration images"
        return candidate
    _, kept_float = result
    candidate.measured.extra["kept_float"] = kept_float
    _open_candidate(ctx, candidate, ["model.onnx"], {})
    _measure_accuracy(ctx, candidate)
    return candidate


def _time(ctx: _Context, built: list[_Candidate]) -> None:
    """Round-robin batch-1 timing of every working candidate of one format."""
    one = np.ascontiguousarray(ctx.reference.batch[:1])
    calls = {c.recipe.name: (lambda clf=c.classifier: clf.logits(one)) for c in built if c.classifier is not None}
    timings = round_robin(calls, rounds=ctx.search.rounds, block=ctx.search.block,
                          max_seconds=ctx.search.max_timing_seconds)
    for candidate in built:
        if candidate.measured is not None and candidate.recipe.name in timings:
            candidate.measured.timing = timings[candidate.recipe.name]


def _finalize(ctx: _Context, chosen: _Candidate, target: ExportTarget, selection: Selection, staging: Path) -> Path:
    """Copy the chosen candidate to its own publish directory and write its final manifest."""
    m, manifest = chosen.measured, chosen.manifest
    if m is None or manifest is None:
        raise ExportError(f"candidate {chosen.recipe.name} has no manifest")
    shutil.copytree(chosen.staging, staging)
    manifest.runtime_precision = m.runtime_precision
    ref = ctx.reference
    manifest.parity = {
        "reference": "pytorch-fp32", "split": ref.name, "images": int(len(ref.batch)),
        "top1_agreement": m.agreement, "disagreements": int(round((1 - m.agreement) * len(ref.batch))),
        "max_abs_logit_error": m.max_abs_logit_error,
        "mean_abs_logit_error": m.extra.get("mean_abs_logit_error", 0.0), "runtime_precision": m.runtime_precision,
    }
    if m.top1 is not None:
        manifest.accuracy = {"split": ref.name, "images": int(len(ref.batch)), "top1": m.top1,
                             "reference_top1": m.reference_top1, "drop_points": m.drop}
    manifest.search = search_table(selection, bar=ctx.search.bar, check_name=ref.name, check_images=len(ref.batch),
                                   requested=target.precision)
    manifest.accepted_drop = selection.accepted_drop
    if chosen.logits is not None:
        _calibrate(manifest, chosen.logits, ref, ctx.min_precision)
    manifest.taxonomy = ctx.taxonomy.to_dict() if ctx.taxonomy is not None else None
    if ctx.embeddings is not None:
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


def _agreement_drop(bar: AccuracyBar) -> float:
    """The agreement loss allowed where no labels decide: the labelled bar's points, or 1 - min_agreement."""
    return min(bar.max_drop / 100.0, 1.0 - bar.min_agreement) if bar.max_drop > 0 else 1.0 - bar.min_agreement


def _is_transformer(onnx_path: Path) -> bool:
    """A graph with Softmax inside and several MatMuls is attention: NNCF then uses its transformer scheme."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    return ops.count("MatMul") >= 4 and "Softmax" in ops[:-1]


def _cpu_has_bf16(fmt: str) -> bool:
    """Whether the format's backend computes bf16 natively on this machine's CPU (else a bf16
    candidate would only repeat FP32)."""
    from edge_cls.runtimes import backend_class

    return "bf16" in backend_class(FORMATS[fmt].backend).native_precisions("CPU")
