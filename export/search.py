"""The precision search: measure every candidate artifact of a backend, then choose.

For one backend, every candidate (FP32 and each low-precision recipe) is loaded through the
public runtime API, scored on a check set that never overlaps the calibration images (top-1
against labels when there are labels, agreement with PyTorch otherwise), and timed round-robin
on this machine. Then:

- ``auto`` ships the fastest candidate that meets the accuracy bar and is faster than the FP32
  candidate in most rounds (FP32 when none is); a low-precision artifact slower than its float
  twin is never chosen.
- an explicit precision ships its fastest recipe that meets the bar; if none does, the export
  fails with the figures, unless the user accepted the drop (``accept_drop``), which the manifest
  records. One slower than FP32 is shipped (the user asked for it) with a loud warning.

The whole table (candidate, recipe, p50, spread, accuracy, agreement, verdict, why) goes into the
shipped artifact's manifest, ``edge-cls info`` and the build report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError, ExportError
from edge_cls.measure.timing import RoundRobinTiming

from .formats import AUTO

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.3  # points of top-1 on a labelled check set
DEFAULT_MIN_AGREEMENT = 0.995  # top-1 agreement with PyTorch on an unlabelled check set


@dataclass(frozen=True, kw_only=True)
class AccuracyBar:
    """What a low-precision candidate must keep: at most ``max_drop`` points of top-1 on labelled
    check images, or at least ``min_agreement`` top-1 agreement with PyTorch on unlabelled ones."""

    max_drop: float = DEFAULT_MAX_DROP
    min_agreement: float = DEFAULT_MIN_AGREEMENT

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop <= 100:
            raise ConfigError(f"max_drop is in points of top-1 (0..100), got {self.max_drop}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement is a fraction (0..1), got {self.min_agreement}")

    def describe(self, labelled: bool) -> str:
        if labelled:
            return f"top-1 drop <= {self.max_drop:g} pts"
        return f"top-1 agreement >= {100 * self.min_agreement:g}%"


@dataclass
class Measured:
    """One candidate after measurement."""

    name: str  # the artifact name it would ship under, e.g. "onnx-int8"
    recipe: str
    precision: str
    runtime_precision: str = ""
    timing: RoundRobinTiming | None = None
    top1: float | None = None  # on the check set, when labelled
    reference_top1: float | None = None  # PyTorch FP32 on the same images
    agreement: float = 0.0  # top-1 agreement with PyTorch
    max_abs_logit_error: float = 0.0
    build_seconds: float = 0.0
    error: str = ""  # the build or load failed: why
    verdict: str = ""
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drop(self) -> float | None:
        """Points of top-1 lost against PyTorch (negative: gained)."""
        if self.top1 is None or self.reference_top1 is None:
            return None
        return 100.0 * (self.reference_top1 - self.top1)

    @property
    def p50_ms(self) -> float:
        return self.timing.p50_ms if self.timing else float("inf")

    def meets(self, bar: AccuracyBar) -> bool:
        if self.error:
            return False
        if self.drop is not None:
            return self.drop <= bar.max_drop + 1e-9
        return self.agreement >= bar.min_agreement - 1e-9

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name, "recipe": self.recipe, "precision": self.precision,
            "runtime_precision": self.runtime_precision,
            "p50_ms": None if self.timing is None else self.timing.p50_ms,
            "spread": None if self.timing is None else self.timing.spread,
            "top1": self.top1, "drop_points": self.drop, "agreement": self.agreement,
            "max_abs_logit_error": self.max_abs_logit_error, "build_seconds": self.build_seconds,
            "verdict": self.verdict, "why": self.why,
        }
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


def select(rows: list[Measured], *, requested: str, bar: AccuracyBar, accept_drop: bool = False) -> Selection:
    """Choose what ships for one backend and write each row's verdict and why.

    ``requested`` is ``auto`` or a precision; ``rows`` must include the FP32 candidate (the speed
    reference), which :func:`select` returns for ``auto`` when nothing beats it.
    """
    fp32 = next((r for r in rows if r.precision == "fp32" and not r.error), None)
    if fp32 is None:
        raise ExportError("the precision search needs a working FP32 candidate as its reference")
    labelled = fp32.top1 is not None
    bar_text = bar.describe(labelled)
    for row in rows:
        _judge(row, fp32, bar, bar_text)
    if requested == AUTO:
        eligible = [r for r in rows if r is fp32 or (r.meets(bar) and faster_than(r, fp32))]
        chosen = min(eligible, key=lambda r: r.p50_ms)
        reason = ("fastest candidate that meets the bar and beats FP32" if chosen is not fp32
                  else "no low-precision candidate both meets the bar and beats FP32")
        return _finish(rows, chosen, reason)
    wanted = [r for r in rows if r.precision == requested]
    if not wanted:
        raise ExportError(f"no {requested} candidate was built")
    passing = [r for r in wanted if r.meets(bar)]
    if passing:
        chosen = min(passing, key=lambda r: r.p50_ms)
        selection = _finish(rows, chosen, f"fastest {requested} recipe that meets the bar")
    elif accept_drop:
        working = [r for r in wanted if not r.error] or wanted
        chosen = max(working, key=lambda r: (r.top1 if r.top1 is not None else r.agreement, -r.p50_ms))
        selection = _finish(rows, chosen, f"no {requested} recipe meets the bar ({bar_text}); shipped because "
                                          "the drop was accepted (--accept-drop)")
        selection.accepted_drop = True
    else:
        raise ExportError(_miss_message(requested, wanted, fp32, bar_text))
    if chosen is not fp32 and not faster_than(chosen, fp32):
        selection.slower_than_fp32 = True
        logger.warning("%s (%s) is NOT faster than FP32 on this machine: %.3f ms vs %.3f ms p50; shipped because "
                       "%s was asked for explicitly (use --precisions auto to ship the faster one)",
                       chosen.name, chosen.recipe, chosen.p50_ms, fp32.p50_ms, requested)
    return selection


def _judge(row: Measured, fp32: Measured, bar: AccuracyBar, bar_text: str) -> None:
    if row.error:
        row.verdict, row.why = "failed", row.error
    elif row is fp32:
        row.verdict, row.why = "reference", "float reference for speed"
    elif not row.meets(bar):
        row.verdict, row.why = "misses bar", f"{_accuracy_text(row)}; bar: {bar_text}"
    elif not faster_than(row, fp32):
        row.verdict, row.why = "slower", f"{_speed_text(row, fp32)}: not faster than FP32"
    else:
        row.verdict, row.why = "eligible", f"{_speed_text(row, fp32)}; {_accuracy_text(row)}"


def _finish(rows: list[Measured], chosen: Measured, reason: str) -> Selection:
    chosen.verdict = "shipped"
    chosen.why = reason + (f" ({chosen.why})" if chosen.why and chosen.why != reason else "")
    return Selection(chosen, rows, reason=reason)


def _accuracy_text(row: Measured) -> str:
    if row.drop is not None:
        return f"top-1 {100 * row.top1:.2f}% ({row.drop:+.2f} pts), agreement {100 * row.agreement:.1f}%"
    return f"agreement {100 * row.agreement:.2f}%"


def _speed_text(row: Measured, fp32: Measured) -> str:
    ratio = row.p50_ms / fp32.p50_ms if fp32.p50_ms else float("nan")
    return f"{ratio:.2f}x FP32 p50 ({row.p50_ms:.3f} vs {fp32.p50_ms:.3f} ms)"


def _miss_message(requested: str, wanted: list[Measured], fp32: Measured, bar_text: str) -> str:
    best = max(wanted, key=lambda r: (not r.error, r.top1 if r.top1 is not None else r.agreement))
    detail = best.error or _accuracy_text(best)
    return (f"no {requested} recipe meets the accuracy bar ({bar_text}): the best, {best.recipe}, has {detail} "
            f"(FP32: {_accuracy_text(fp32)}); try --precisions auto (ships the fastest artifact that keeps the "
            "answer), a larger --max-drop, more or more representative --calib-data, or --accept-drop to ship it "
            "anyway")


def score(logits: np.ndarray, reference_logits: np.ndarray, targets: np.ndarray | None) -> dict[str, float | None]:
    """Top-1 (single-label targets), agreement with the reference and logit error."""
    predicted = logits.argmax(1)
    single_label = targets is not None and targets.ndim == 1
    return {
        "top1": float((predicted == targets).mean()) if single_label else None,
        "reference_top1": float((reference_logits.argmax(1) == targets).mean()) if single_label else None,
        "agreement": float((predicted == reference_logits.argmax(1)).mean()),
        "max_abs_logit_error": float(np.abs(logits - reference_logits).max()),
    }


def search_table(selection: Selection, *, bar: AccuracyBar, check_name: str, check_images: int,
                 requested: str) -> dict[str, Any]:
    """The manifest's ``search`` block."""
    labelled = selection.rows[0].top1 is not None if selection.rows else False
    return {
        "requested": requested,
        "bar": bar.describe(labelled),
        "max_drop_points": bar.max_drop,
        "min_agreement": bar.min_agreement,
        "check": {"split": check_name, "images": check_images, "labelled": labelled},
        "chosen": selection.chosen.name + ":" + selection.chosen.recipe,
        "reason": selection.reason,
        "accepted_drop": selection.accepted_drop,
        "slower_than_fp32": selection.slower_than_fp32,
        "candidates": [r.to_dict() for r in selection.rows],
    }
