"""Checks on production data: do the images a deployed artifact sees look like its validation set?

At build time an artifact stores a summary of its answers on the validation split: how confident
they were (a histogram of the top-1 probability), how often each class was predicted, and, with
labels, top-1 and calibration error. :func:`compare` puts the same summary of new images next to
it: with labels, accuracy and ECE against the validation figures; without, a shift score for the
confidence distribution and for the predicted-class distribution (the population stability index,
a standard drift score: under 0.1 little change, 0.1-0.25 a moderate shift, above 0.25 a large one)
and the classes whose share moved most. For artifacts with embeddings, a two-sample test of the
embedding distribution joins them (:mod:`edge_cls.quality.feature_drift`). numpy only: this runs on
the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError
from edge_cls.quality.evaluate import expected_calibration_error

CONFIDENCE_BINS = 10
PSI_MODERATE, PSI_LARGE = 0.1, 0.25
EPSILON = 1e-4  # keeps empty bins from making the PSI infinite


def summarize(probabilities: np.ndarray, targets: np.ndarray | None = None, *, split: str = "val") -> dict[str, Any]:
    """What the manifest stores about an artifact's answers on a split (single-label probabilities)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    histogram = np.histogram(confidence, bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0]
    shares = np.bincount(predicted, minlength=probabilities.shape[1])
    summary: dict[str, Any] = {
        "split": split, "images": int(len(confidence)),
        "confidence_histogram": (histogram / max(len(confidence), 1)).tolist(),
        "mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
        "class_shares": (shares / max(len(confidence), 1)).tolist(),
    }
    if targets is not None and len(targets):
        summary["top1"] = float((predicted == targets).mean())
        summary["ece"] = expected_calibration_error(probabilities, targets)
    return summary


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two distributions over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def shift_level(score: float) -> str:
    return "large" if score > PSI_LARGE else "moderate" if score > PSI_MODERATE else "small"


@dataclass
class CheckReport:
    """New images against the artifact's validation summary."""

    reference: dict[str, Any]
    current: dict[str, Any]
    confidence_shift: float
    class_shift: float
    movers: list[dict[str, Any]] = field(default_factory=list)
    features: Any = None  # edge_cls.quality.feature_drift.FeatureShift, for artifacts with embeddings

    @property
    def verdict(self) -> str:
        level = shift_level(max(self.confidence_shift, self.class_shift))
        if self.features is not None and self.features.flagged and level == "small":
            return "moderate"  # the embedding distribution moved although answers look alike
        return level

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "current": self.current, "confidence_shift_psi": self.confidence_shift,
                "class_shift_psi": self.class_shift, "verdict": self.verdict, "classes_that_moved_most": self.movers,
                "feature_shift": None if self.features is None else self.features.to_dict()}

    def lines(self) -> list[str]:
        ref, cur = self.reference, self.current
        out = [f"images:            {cur['images']} checked, {ref['images']} in the artifact's {ref['split']} summary"]
        if "top1" in cur:
            ref_top1 = f"{100 * ref['top1']:.1f}%" if "top1" in ref else "-"
            out.append(f"top-1:             {100 * cur['top1']:.1f}% here, {ref_top1} on {ref['split']}")
            ref_ece = f"{ref['ece']:.4f}" if "ece" in ref else "-"
            out.append(f"calibration (ECE): {cur['ece']:.4f} here, {ref_ece} on {ref['split']}")
        out.append(f"mean confidence:   {cur['mean_confidence']:.3f} here, "
                   f"{ref['mean_confidence']:.3f} on {ref['split']}")
        out.append(f"confidence shift:  PSI {self.confidence_shift:.3f} ({shift_level(self.confidence_shift)})")
        out.append(f"class shift:       PSI {self.class_shift:.3f} ({shift_level(self.class_shift)})")
        if self.features is not None:
            out.append(f"feature shift:     {self.features.line()}")
        if self.movers:
            out.append("moved most:        " + ", ".join(
                f"{m['label']} {100 * m['reference_share']:.1f}% -> {100 * m['share']:.1f}%" for m in self.movers))
        out.append(f"verdict:           {self.verdict} shift" + (
            " - the validation figures may not hold for these images" if self.verdict != "small" else ""))
        return out


def compare(reference: dict[str, Any], probabilities: np.ndarray, labels: Sequence[str],
            targets: np.ndarray | None = None, *, top: int = 5) -> CheckReport:
    """Summarise ``probabilities`` of new images and compare with the stored ``reference`` summary."""
    for key in ("confidence_histogram", "class_shares", "images", "split", "mean_confidence"):
        if key not in reference:
            raise ConfigError(f"the artifact's validation summary has no {key!r}: rebuild it with this edge-cls")
    if len(reference["class_shares"]) != len(labels):
        raise ConfigError("the artifact's validation summary does not match its labels: rebuild it")
    current = summarize(probabilities, targets, split="checked")
    moved = np.asarray(current["class_shares"]) - np.asarray(reference["class_shares"])
    order = np.argsort(-np.abs(moved), kind="stable")[:top]
    movers = [{"label": labels[i], "share": current["class_shares"][i], "reference_share": reference["class_shares"][i]}
              for i in order if abs(moved[i]) > 0]
    return CheckReport(reference, current, psi(reference["confidence_histogram"], current["confidence_histogram"]),
                       psi(reference["class_shares"], current["class_shares"]), movers)
