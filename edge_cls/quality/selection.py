"""The precision search's choice: on measured candidates of one backend, what ships and why.

For one backend, every candidate (FP32 and each low-precision recipe) is loaded through the
public runtime API, judged on a check set that never overlaps its calibration images by what its
changed answers are expected to cost (:mod:`edge_cls.quality.acceptance`: the expected top-1 drop
and its interval over source pictures, with labels a McNemar guard), and timed round-robin on this
machine. Then:

- ``auto`` ships the fastest candidate that meets the rule and is faster than the FP32 candidate
  in most rounds (FP32 when none is); a low-precision artifact slower than its float twin is never
  chosen.
- an explicit precision ships its fastest recipe that meets the rule; if none does, the export
  fails with the figures, unless the user accepted the drop (``accept_drop``), which the manifest
  records. One slower than FP32 is shipped (the user asked for it) with a loud warning.

The whole table (candidate, recipe, p50, spread, expected drop and interval, flips, agreement,
confident agreement, KL, verdict, why) goes into the shipped artifact's manifest, ``edge-cls
info`` and the build report. Torch-free: ``edge-cls export`` runs it on the build host and
``edge-cls choose`` on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edge_cls.errors import ExportError
from edge_cls.measure.timing import RoundRobinTiming
from edge_cls.quality.acceptance import AcceptanceRule, Evidence, Judgement, describe

logger = logging.getLogger(__name__)

AUTO = "auto"  # the precision that means: the fastest candidate that keeps the answer, chosen by measurement


@dataclass
class Measured:
    """One candidate after measurement: its timing, its evidence on the check set and the rule's judgement."""

    name: str  # the artifact name it would ship under, e.g. "onnx-int8"
    recipe: str
    precision: str
    runtime_precision: str = ""
    timing: RoundRobinTiming | None = None
    evidence: Evidence | None = None
    judgement: Judgement | None = None
    max_abs_logit_error: float = 0.0
    build_seconds: float = 0.0
    error: str = ""  # the build or load failed: why
    verdict: str = ""
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        return self.evidence.agreement if self.evidence is not None else 0.0

    @property
    def top1(self) -> float | None:
        return self.evidence.top1 if self.evidence is not None else None

    @property
    def p50_ms(self) -> float:
        return self.timing.p50_ms if self.timing else float("inf")

    def meets(self) -> bool:
        return not self.error and self.judgement is not None and self.judgement.meets

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name, "recipe": self.recipe, "precision": self.precision,
            "runtime_precision": self.runtime_precision,
            "p50_ms": None if self.timing is None else self.timing.p50_ms,
            "spread": None if self.timing is None else self.timing.spread,
            **(self.evidence.to_dict() if self.evidence is not None else {}),
            "max_abs_logit_error": self.max_abs_logit_error, "build_seconds": self.build_seconds,
            "verdict": self.verdict, "why": self.why,
        }
        if self.judgement is not None and self.judgement.thin:
            row["settle_pictures"] = self.judgement.settle_pictures
        row.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool)) or v is None})
        if self.error:
            row["error"] = self.error
        return row


@dataclass
class Selection:
    chosen: Measured
    rows: list[Measured]
    accepted_drop: bool = False
    slower_than_fp32: bool = False
    reason: str = ""


MIN_GAIN = 0.05  # a low-precision artifact must be at least 5% faster than FP32 to be worth its drift


def faster_than(candidate: Measured, reference: Measured) -> bool:
    """Faster at the median by at least MIN_GAIN and by more than half the rounds' spread (so a
    noisy machine ships FP32 rather than a guess), and faster in at least two thirds of the rounds
    (paired by round): noise and drift on a shared machine must not decide."""
    if candidate.timing is None or reference.timing is None:
        return False
    rounds = len(candidate.timing.rounds_ms)
    needed = max(MIN_GAIN, 0.5 * max(candidate.timing.spread, reference.timing.spread))
    return (candidate.p50_ms <= (1.0 - needed) * reference.p50_ms
            and 3 * candidate.timing.rounds_faster_than(reference.timing) >= 2 * rounds)


def select(rows: list[Measured], *, requested: str, rule: AcceptanceRule, accept_drop: bool = False) -> Selection:
    """Choose what ships for one backend and write each row's verdict and why.

    ``requested`` is ``auto`` or a precision; ``rows`` must include the FP32 candidate (the speed
    reference), which :func:`select` returns for ``auto`` when nothing beats it. Each row's
    ``judgement`` (the acceptance rule on its evidence) must be set.
    """
    fp32 = next((r for r in rows if r.precision == "fp32" and not r.error), None)
    if fp32 is None:
        raise ExportError("the precision search needs a working FP32 candidate as its reference")
    for row in rows:
        _verdict(row, fp32)
    if requested == AUTO:
        eligible = [r for r in rows if r is fp32 or (r.meets() and faster_than(r, fp32))]
        chosen = min(eligible, key=lambda r: r.p50_ms)
        reason = ("fastest candidate that meets the rule and beats FP32" if chosen is not fp32
                  else "no low-precision candidate both meets the rule and beats FP32")
        return _finish(rows, chosen, reason)
    wanted = [r for r in rows if r.precision == requested]
    if not wanted:
        raise ExportError(f"no {requested} candidate was built")
    passing = [r for r in wanted if r.meets()]
    if passing:
        chosen = min(passing, key=lambda r: r.p50_ms)
        selection = _finish(rows, chosen, f"fastest {requested} recipe that meets the rule")
    elif accept_drop:
        working = [r for r in wanted if not r.error] or wanted
        chosen = min(working, key=_cost)
        selection = _finish(rows, chosen, f"no {requested} recipe meets the rule ({rule.describe()}); shipped "
                                          "because the drop was accepted (--accept-drop)")
        selection.accepted_drop = True
    else:
        raise ExportError(_miss_message(requested, wanted, rule))
    if chosen is not fp32 and not faster_than(chosen, fp32):
        selection.slower_than_fp32 = True
        logger.warning("%s (%s) is NOT faster than FP32 on this machine: %.3f ms vs %.3f ms p50; shipped because "
                       "%s was asked for explicitly (use --precisions auto to ship the faster one)",
                       chosen.name, chosen.recipe, chosen.p50_ms, fp32.p50_ms, requested)
    return selection


def _cost(row: Measured) -> tuple[float, float]:
    """Least expected drop first, then fastest."""
    drop = row.evidence.expected_drop if row.evidence is not None and not row.error else float("inf")
    return drop, row.p50_ms


def _verdict(row: Measured, fp32: Measured) -> None:
    if row.error:
        row.verdict, row.why = "failed", row.error
    elif row is fp32:
        row.verdict, row.why = "reference", "float reference for speed"
    elif not row.meets():
        row.verdict = "thin evidence" if row.judgement is not None and row.judgement.thin else "misses bar"
        row.why = row.judgement.why if row.judgement is not None else "not judged"
    elif not faster_than(row, fp32):
        row.verdict, row.why = "slower", f"{_speed_text(row, fp32)}: {_why_not_faster(row, fp32)}"
    else:
        row.verdict, row.why = "eligible", f"{_speed_text(row, fp32)}; {row.judgement.why}"  # type: ignore[union-attr]


def _finish(rows: list[Measured], chosen: Measured, reason: str) -> Selection:
    chosen.verdict = "shipped"
    chosen.why = reason + (f" ({chosen.why})" if chosen.why and chosen.why != reason else "")
    return Selection(chosen, rows, reason=reason)


def _speed_text(row: Measured, fp32: Measured) -> str:
    ratio = row.p50_ms / fp32.p50_ms if fp32.p50_ms else float("nan")
    return f"{ratio:.2f}x FP32 p50 ({row.p50_ms:.3f} vs {fp32.p50_ms:.3f} ms)"


def _why_not_faster(row: Measured, fp32: Measured) -> str:
    if row.timing is None or fp32.timing is None or row.p50_ms >= (1.0 - MIN_GAIN) * fp32.p50_ms:
        return "not faster than FP32"
    rounds, wins = len(row.timing.rounds_ms), row.timing.rounds_faster_than(fp32.timing)
    if 3 * wins < 2 * rounds:
        return f"faster in only {wins} of {rounds} rounds: not reliably faster than FP32"
    spread = max(row.timing.spread, fp32.timing.spread)
    return f"the gain is within the rounds' spread (±{spread:.0%}): not reliably faster than FP32"


def _miss_message(requested: str, wanted: list[Measured], rule: AcceptanceRule) -> str:
    best = min(wanted, key=_cost)
    detail = best.error or (describe(best.evidence) if best.evidence is not None else "no figures")
    return (f"no {requested} recipe meets the rule ({rule.describe()}): the best, {best.recipe}, has {detail}; try "
            "--precisions auto (ships the fastest artifact that keeps the answer), a larger --max-drop, more or more "
            "representative --calib-data, or --accept-drop to ship it anyway")


def search_table(selection: Selection, *, rule: AcceptanceRule, check_name: str, check_images: int,
                 requested: str, check_pictures: int | None = None, cross_fitted: bool = False) -> dict[str, Any]:
    """The manifest's ``search`` block."""
    labelled = any(r.evidence is not None and r.evidence.labelled for r in selection.rows)
    return {
        "requested": requested,
        "bar": rule.describe(),
        "max_drop_points": rule.max_drop,
        "min_agreement": rule.min_agreement,
        "interval_level": rule.level,
        "check": {"split": check_name, "images": check_images, "pictures": check_pictures, "labelled": labelled,
                  "cross_fitted": cross_fitted},
        "chosen": selection.chosen.name + ":" + selection.chosen.recipe,
        "reason": selection.reason,
        "accepted_drop": selection.accepted_drop,
        "slower_than_fp32": selection.slower_than_fp32,
        "candidates": [r.to_dict() for r in selection.rows],
    }
