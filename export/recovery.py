"""Recovering what quantization loses: the restoring recipes, built when the plain INT8 recipes of a
format miss the acceptance rule (or always, where the caller asks, as ``edge-cls build`` does).

Each is a named recipe in the search, measured and timed like the others (:mod:`.recipes`):
layer fallback on ONNX Runtime (calibrated once, layers ranked once, quantized with the stored
ranges), NNCF accuracy control and channel alignment on OpenVINO, cross-layer equalization before
either quantizer, and quantization-aware distillation. The ONNX Runtime fallback judges its steps on
the calibration images, so the check images stay unseen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from edge_cls.quality.acceptance import judge, measure
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
            candidate = restore_onnx(ctx, recipe, built)
        else:
            candidate = build_candidate(ctx, recipe)
            judge_candidate(ctx, candidate)
        if candidate is not None:
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


def restore_onnx(ctx: ExportContext, recipe: Recipe, built: list[Candidate]) -> Candidate | None:
    """ONNX Runtime: the best ORT-quantizer recipe with its worst layers back in float."""
    from .onnxruntime_export import restore_accuracy

    tried = [c for c in built
             if c.recipe.ort is not None and c.measured is not None and c.measured.evidence is not None]
    if not tried or ctx.calibration is None:
        return None
    fp32 = next(c for c in built if c.recipe.precision == "fp32")
    base = min(_faster_than_fp32(ctx, tried, fp32) or tried,
               key=lambda c: c.measured.evidence.expected_drop)  # type: ignore[union-attr]
    calibration_reference = fp32.classifier.logits(ctx.calibration.array)

    def meets_rule(path: Path) -> bool:  # judged on calibration images: the check images stay unseen
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: ctx.calibration.array})[0]
        return judge(measure(calibration_reference, logits, rule=ctx.search.rule), ctx.search.rule).meets

    name = f"{recipe.name}({base.recipe.name})"
    staging = ctx.work / name
    staging.mkdir()
    started = time.perf_counter()
    result = restore_accuracy(ctx.source, staging / "model.onnx", ctx.calibration, base.recipe.ort, meets_rule)
    measured = Measured(name="onnx-int8", recipe=name, precision="int8", build_seconds=time.perf_counter() - started)
    if result is None:
        measured.error = "restoring up to 16 layers to float did not meet the rule on the calibration images"
        return Candidate(replace(base.recipe, name=name, restores=True), staging, measured=measured)
    _, kept_float = result
    # The recipe that rebuilds it (a second cross-fitting fold): the base settings with those layers in float.
    restored = replace(base.recipe, name=name, restores=True, summary=f"{base.recipe.summary}; {len(kept_float)} "
                       "layers that hurt the answer most kept in float",
                       ort=replace(base.recipe.ort, nodes_to_exclude=tuple(kept_float)))  # type: ignore[arg-type]
    candidate = Candidate(restored, staging, measured=measured)
    measured.extra["kept_float"] = len(kept_float)
    open_candidate(ctx, candidate, ["model.onnx"], {})
    judge_candidate(ctx, candidate)
    return candidate

