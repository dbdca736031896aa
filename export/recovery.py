"""Recovering what quantization loses: the restoring recipes, built when the plain INT8 recipes of a
format miss the acceptance rule (or always, where the caller asks, as ``edge-cls build`` does).

Each is a named recipe in the search, measured and timed like the others (:mod:`.recipes`):
layer fallback on ONNX Runtime (calibrated once, layers and float regions ranked once by what each
costs the answer, one candidate per number of them kept in float), NNCF accuracy control and channel alignment on
OpenVINO, cross-layer equalization before either quantizer, and quantization-aware distillation.
The ONNX Runtime fallback ranks its layers on the calibration images, so the check images stay unseen
until the search judges its candidates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from edge_cls.errors import ExportError
from edge_cls.quality.selection import Measured

from .candidates import Candidate, ExportContext, build_candidate, judge_candidate, open_candidate
from .recipes import RECIPES, Recipe

logger = logging.getLogger(__name__)


def recover(ctx: ExportContext, fmt: str, built: list[Candidate]) -> list[Candidate]:
    """Build the format's restoring recipes when no plain INT8 candidate meets the rule (bounded)."""
    int8 = [c.measured for c in built if c.recipe.int8 and c.measured is not None]
    needed = not any(m.meets() for m in int8)  # also when --recipes left no plain INT8 recipe
    if ctx.calibration is None:
        return []
    extra = []
    for recipe in RECIPES.values():
        if recipe.format != fmt or not recipe.restores or (ctx.search.only is not None
                                                            and recipe.name not in ctx.search.only):
            continue
        mode = ctx.search.recovery_mode(recipe)
        if mode == "never" or (mode == "when-needed" and not needed):
            continue
        if recipe.distill is not None and ctx.task != "single_label":
            continue  # the distillation's soft targets are a softmax: single-label models only
        logger.info("%s: building the restoring recipe %s", fmt, recipe.name)
        if recipe.name == "ort-restore":
            extra.extend(restore_onnx(ctx, recipe, built + extra))  # may start from a restoring recipe
        else:
            candidate = build_candidate(ctx, recipe)
            judge_candidate(ctx, candidate)
            extra.append(candidate)
    return extra


def _faster_than_fp32(ctx: ExportContext, tried: list[Candidate], fp32: Candidate) -> list[Candidate]:
    """The recipes a fallback could still ship: faster than FP32 here by a margin, in a short round-robin
    (restoring layers to float only slows a recipe down; one already slower than FP32 never ships)."""
    import numpy as np

    from edge_cls.measure.timing import round_robin

    one = np.ascontiguousarray(ctx.reference.batch[:1])
    runners = [c for c in (fp32, *tried) if c.classifier is not None]
    calls = {c.recipe.name: (lambda clf=c.classifier: clf.logits(one)) for c in runners}
    timings = round_robin(calls, rounds=3, block=10, max_seconds=min(20.0, ctx.search.max_timing_seconds))
    if fp32.recipe.name not in timings:
        return []
    limit = 0.9 * timings[fp32.recipe.name].p50_ms
    return [c for c in tried if c.recipe.name in timings and timings[c.recipe.name].p50_ms < limit]


def restore_onnx(ctx: ExportContext, recipe: Recipe, built: list[Candidate]) -> list[Candidate]:
    """ONNX Runtime: the best ORT-quantizer recipe with its costliest units kept in float, one candidate
    per count in :data:`~edge_cls.export.ort_fallback.COUNTS`, named by the number of layers it keeps,
    each judged on the check images like any other recipe (the ranking saw calibration images only)."""
    from .ort_fallback import COUNTS, fallback_models

    tried = [c for c in built  # the fallback quantizes the source graph: no equalized or distilled base
             if c.recipe.ort is not None and not c.recipe.equalize and c.recipe.distill is None
             and c.measured is not None and c.measured.evidence is not None and c.classifier is not None]
    if not tried or ctx.calibration is None:
        return []
    fp32 = next(c for c in built if c.recipe.precision == "fp32")
    base = min(_faster_than_fp32(ctx, tried, fp32) or tried,
               key=lambda c: c.measured.evidence.expected_drop)  # type: ignore[union-attr]
    work = ctx.work / f"{recipe.name}({base.recipe.name})"
    work.mkdir()
    started = time.perf_counter()
    try:
        models = fallback_models(ctx.source, work, ctx.calibration, base.recipe.ort, counts=COUNTS)  # type: ignore
    except ExportError as e:
        measured = Measured(name="onnx-int8", recipe=work.name, precision="int8", error=str(e)[:500],
                            build_seconds=time.perf_counter() - started)
        return [Candidate(replace(base.recipe, name=work.name, restores=True), work, measured=measured)]
    seconds = (time.perf_counter() - started) / max(len(models), 1)
    candidates = []
    for path, kept in models:
        name = f"{recipe.name}{len(kept)}({base.recipe.name})"
        # The recipe that rebuilds it (a second cross-fitting fold): the base settings with those layers in float.
        restored = replace(base.recipe, name=name, restores=True, summary=f"{base.recipe.summary}; the {len(kept)} "
                           "layers whose INT8 costs the answer most kept in float",
                           ort=replace(base.recipe.ort, nodes_to_exclude=kept))  # type: ignore[arg-type]
        staging = ctx.work / name
        staging.mkdir()
        path.rename(staging / "model.onnx")
        candidate = Candidate(restored, staging, measured=Measured(name="onnx-int8", recipe=name, precision="int8",
                                                                   build_seconds=seconds))
        candidate.measured.extra["kept_float"] = len(kept)  # type: ignore[union-attr]
        open_candidate(ctx, candidate, ["model.onnx"], {})
        judge_candidate(ctx, candidate)
        candidates.append(candidate)
    return candidates
