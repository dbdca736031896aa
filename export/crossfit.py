"""The second fold of a cross-fitted check, for the finalists of a search.

With only a calibration folder, the folder is split in two halves by source picture: candidates are
calibrated on the first half and judged on the second (:mod:`.candidates`). Then, fastest first,
each finalist (faster than FP32, and meeting the rule on the second half or short of evidence
there) is judged on the first half too: a calibrated recipe is rebuilt calibrated on the second
half, a recipe without calibration (FP16, bf16) runs as it is. Its evidence is both folds together,
every image checked by a model that was not calibrated on it, and the rule judges that. The search
stops at the first finalist that passes for every precision asked for; the slower ones are marked
as not cross-fitted and cannot ship. The artifact that ships is the first fold's model.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_cls.quality.acceptance import Judgement, judge
from edge_cls.quality.selection import faster_than

from .candidates import Candidate, ExportContext, build_candidate, close_candidates
from .formats import AUTO

logger = logging.getLogger(__name__)


def cross_fit(ctx: ExportContext, built: list[Candidate], requested: list[str], *, timed: bool = True) -> None:
    """Judge the finalists on both folds: fastest first, until every requested precision has a winner;
    untimed (a bundle: the device times them), every candidate that could ship."""
    fold = ctx.cross_fit
    fp32 = next(c for c in built if c.recipe.precision == "fp32")
    if fold is None or fp32.measured is None:
        return
    both = ctx.reference.joined(fold.reference, name=f"{ctx.reference.name} + {fold.reference.name} (cross-fitted)")
    fp32.second_logits = fp32.classifier.logits(fold.reference.batch)
    fp32.measured.evidence = both.evidence(np.concatenate([fp32.logits, fp32.second_logits]), ctx.search.rule)
    open_precisions = set(requested)
    finalists = _finalists(ctx, built, fp32, timed)
    for candidate in sorted(finalists, key=lambda c: c.measured.p50_ms) if timed else finalists:  # type: ignore
        m = candidate.measured
        if timed and not (open_precisions & {AUTO, candidate.recipe.precision}):
            m.judgement = Judgement(False, "not cross-fitted: a faster candidate already passed both folds")
            continue
        second = candidate.second_logits = _second_fold_logits(ctx, candidate)
        if second is None:
            m.judgement = Judgement(False, f"its second fold could not be built ({m.extra.get('cross_fit_error')})")
            continue
        m.evidence = both.evidence(np.concatenate([candidate.logits, second]), ctx.search.rule)
        m.judgement = judge(m.evidence, ctx.search.rule)
        m.extra["cross_fitted"] = True
        if m.judgement.meets:
            open_precisions -= {AUTO, candidate.recipe.precision}


def _finalists(ctx: ExportContext, built: list[Candidate], fp32: Candidate, timed: bool) -> list[Candidate]:
    """Candidates that could ship with both folds' evidence: the low end of their interval on one fold
    within the bar (one fold is half the pictures: never refuse on half the evidence), and (when timed)
    faster than FP32."""
    return [c for c in built if c is not fp32 and c.measured is not None and c.measured.evidence is not None
            and not c.measured.error and c.measured.evidence.drop_low <= ctx.search.rule.max_drop
            and (not timed or faster_than(c.measured, fp32.measured))]  # type: ignore[arg-type]


def _second_fold_logits(ctx: ExportContext, candidate: Candidate) -> np.ndarray | None:
    """The candidate's logits on the first half, from a model not calibrated on it."""
    fold = ctx.cross_fit
    if not candidate.recipe.int8:
        return candidate.classifier.logits(fold.reference.batch)  # type: ignore[union-attr]
    twin = build_candidate(ctx, candidate.recipe, calibration=fold.calibration,  # type: ignore[union-attr]
                           staging_name=f"{candidate.recipe.name}-fold2")
    candidate.second_fold = twin.staging
    try:
        if twin.classifier is None:
            candidate.measured.extra["cross_fit_error"] = twin.measured.error  # type: ignore[union-attr]
            logger.warning("%s: the second fold could not be built (%s)", candidate.recipe.name,
                           twin.measured.error)  # type: ignore[union-attr]
            return None
        return twin.classifier.logits(fold.reference.batch)  # type: ignore[union-attr]
    finally:
        close_candidates([twin])
