"""The build report's section on answers you can act on: calibration and abstention on the test split.

For every shipped artifact: expected calibration error before and after its fitted temperature
(with a reliability diagram), the risk-coverage curve of abstaining below a confidence, the
``min_confidence`` that keeps a given accuracy, and, with a taxonomy, accuracy at every level.
Multi-label artifacts: F1 with one 0.5 threshold against their per-class thresholds. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_cls.predictions import sigmoid, softmax
from edge_cls.quality.confidence import plot_reliability, plot_risk_coverage, risk_coverage
from edge_cls.quality.evaluate import evaluate_logits, expected_calibration_error

ACCURACY_TARGETS = (0.99, 0.995, 0.999)


def confidence_section(out: Path, artifacts: Sequence[Path], batch: np.ndarray, targets: np.ndarray,
                       split: str = "test") -> list[str]:
    """Markdown lines (and PNGs beside ``out/report.md``) for the shipped ``artifacts``."""
    from edge_cls.runtimes import load

    lines = ["## Confidence you can act on", ""]
    curves = {}
    for path in artifacts:
        with load(path) as classifier:
            logits = classifier.logits(batch)
            manifest = classifier.manifest
            decision = classifier.decision
        if manifest.task == "multi_label":
            lines += _multi_label_lines(path, logits, targets, decision.thresholds, split)
            continue
        t = decision.temperature
        raw, calibrated = softmax(logits), softmax(logits, t)
        png = plot_reliability(logits, targets, t, out / f"reliability_{path.name}.png",
                               title=f"{path.name}: {split} split, temperature fitted on validation")
        fitted_on = (manifest.calibration or {}).get("fitted_on", "-")
        lines += [f"`{path.name}`: temperature {t:.3f} (fitted on {fitted_on}); "
                  f"ECE on {len(targets)} {split} images {expected_calibration_error(raw, targets):.4f} raw, "
                  f"{expected_calibration_error(calibrated, targets):.4f} calibrated (the default scores).", ""]
        if png:
            lines += [f"![reliability {path.name}]({png.name})", ""]
        curves[path.name] = risk_coverage(calibrated.max(1), calibrated.argmax(1) == targets)
        if decision.taxonomy is not None:
            lines += _level_lines(decision.taxonomy, calibrated, targets)
    if curves:
        lines += _abstention_lines(out, curves, split)
    return lines


def _abstention_lines(out: Path, curves: dict, split: str) -> list[str]:
    lines = [f"Abstaining below a calibrated confidence (`--min-confidence`), on the {split} split: the lowest "
             "threshold that keeps each accuracy, and the share of images still answered.", "",
             "| artifact | " + " | ".join(f"{100 * a:g}% accurate: min_confidence, coverage" for a in ACCURACY_TARGETS)
             + " |", "|---|" + "---|" * len(ACCURACY_TARGETS)]
    for name, curve in curves.items():
        cells = []
        for accuracy in ACCURACY_TARGETS:
            threshold = curve.threshold_for_risk(1 - accuracy)
            if threshold is None:
                cells.append("not reachable")
                continue
            coverage = float(curve.coverage[np.flatnonzero(curve.thresholds >= threshold)[-1]])
            cells.append(f"{threshold:.3f}, {100 * coverage:.1f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    png = plot_risk_coverage(curves, out / "risk_coverage.png", title=f"risk vs coverage ({split} split)")
    return lines + ([""] + [f"![risk-coverage]({png.name})"] if png else []) + [""]


def _level_lines(taxonomy, probabilities: np.ndarray, targets: np.ndarray) -> list[str]:
    levels = taxonomy.level_accuracy(probabilities, targets)
    return ["Accuracy per taxonomy level (0 = the roots): " + ", ".join(
        f"level {d}: {100 * v['accuracy']:.1f}% ({v['nodes']} nodes, {v['images']} images)" for d, v in levels.items()),
        ""]


def _multi_label_lines(path: Path, logits: np.ndarray, targets: np.ndarray, thresholds, split: str) -> list[str]:
    default = evaluate_logits(logits, targets, [str(i) for i in range(logits.shape[1])])
    if thresholds is None:
        return [f"`{path.name}`: micro-F1 {default.metrics['f1_micro']:.3f} at threshold 0.5 ({split}).", ""]
    predicted = sigmoid(logits) >= np.asarray(thresholds)[None, :]
    positives = targets > 0
    tp, fp, fn = (predicted & positives).sum(), (predicted & ~positives).sum(), (~predicted & positives).sum()
    tuned = 2 * tp / max(2 * tp + fp + fn, 1)
    return [f"`{path.name}`: micro-F1 on {len(targets)} {split} images {default.metrics['f1_micro']:.3f} at 0.5, "
            f"{tuned:.3f} with the per-class thresholds fitted on validation (the default).", ""]
