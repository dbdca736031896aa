"""Evaluation metrics from logits: top-k, per-class recall/precision, confusion matrix, ECE, mAP, F1.

Pure numpy, so the same code scores PyTorch models and exported artifacts. Written here rather
than taken from timm (its evaluators need torch and report top-k only) or scikit-learn (a large
dependency for a few formulas).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def top_k_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == targets[:, None]).any(1).mean())


def confusion_matrix(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    return matrix


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence (Guo et al. 2017): the bin-weighted |accuracy - confidence|."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (VOC/COCO style,
    no interpolation); NaN for a class with no positives."""
    if positives.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order] > 0
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


@dataclass
class Evaluation:
    """Metrics of one model on one labelled split."""

    name: str
    images: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "images": self.images,
            "metrics": self.metrics,
            "per_class": self.per_class,
        }
        if self.confusion is not None:
            data["confusion"] = self.confusion.tolist()
        return data


def evaluate_logits(
    logits: np.ndarray, targets: np.ndarray, classes: Sequence[str], *, name: str = "", threshold: float = 0.5
) -> Evaluation:
    """Single-label (targets are indices): top-1/top-5, ECE, per-class recall and precision,
    confusion. Multi-label (targets are (N, C) 0/1): mAP, micro/macro F1 at ``threshold``, per-class AP."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return _evaluate_multi_label(logits, targets, classes, name, threshold)
    predicted = logits.argmax(1)
    matrix = confusion_matrix(predicted, targets, len(classes))
    support = matrix.sum(1)
    predicted_count = matrix.sum(0)
    diagonal = np.diag(matrix)
    recall = np.divide(diagonal, support, out=np.full(len(classes), np.nan), where=support > 0)
    precision = np.divide(diagonal, predicted_count, out=np.full(len(classes), np.nan), where=predicted_count > 0)
    metrics = {
        "top1": float((predicted == targets).mean()),
        "top5": top_k_accuracy(logits, targets, 5),
        "ece": expected_calibration_error(softmax(logits), targets),
        "mean_class_recall": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
    }
    per_class = {
        c: {"recall": float(recall[i]), "precision": float(precision[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    return Evaluation(name, len(targets), metrics, per_class, matrix)


def _evaluate_multi_label(
    logits: np.ndarray, targets: np.ndarray, classes: Sequence[str], name: str, threshold: float
) -> Evaluation:
    probabilities = sigmoid(logits)
    predicted = probabilities >= threshold
    positives = targets > 0
    ap = np.array([average_precision(probabilities[:, i], positives[:, i]) for i in range(len(classes))])
    tp = (predicted & positives).sum(0)
    fp = (predicted & ~positives).sum(0)
    fn = (~predicted & positives).sum(0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(classes)), where=(2 * tp + fp + fn) > 0)
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    metrics = {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "f1_micro": float(2 * tp.sum() / micro_denominator) if micro_denominator else 0.0,
        "f1_macro": float(f1.mean()),
        "exact_match": float((predicted == positives).all(1).mean()),
    }
    per_class = {c: {"ap": float(ap[i]), "f1": float(f1[i]), "support": int(positives[:, i].sum())}
                 for i, c in enumerate(classes)}
    return Evaluation(name, len(targets), metrics, per_class)


def comparison_table(evaluations: Sequence[Evaluation]) -> str:
    """Markdown: the models side by side, one row per metric, then per-class recall (or AP)."""
    metric_names = list(dict.fromkeys(k for e in evaluations for k in e.metrics))
    lines = ["| metric | " + " | ".join(e.name for e in evaluations) + " |",
             "|---|" + "---|" * len(evaluations)]
    for metric in metric_names:
        cells = [_fmt(metric, e.metrics.get(metric)) for e in evaluations]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    per_class_key = "recall" if evaluations and "top1" in evaluations[0].metrics else "ap"
    classes = list(evaluations[0].per_class) if evaluations else []
    if classes:
        lines += ["", f"Per-class {per_class_key}:", "",
                  "| class | support | " + " | ".join(e.name for e in evaluations) + " |",
                  "|---|---|" + "---|" * len(evaluations)]
        for c in classes:
            support = evaluations[0].per_class[c]["support"]
            cells = [_fmt(per_class_key, e.per_class[c][per_class_key]) for e in evaluations]
            lines.append(f"| {c} | {support} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(metric: str, value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if metric == "temperature":
        return f"{value:.3f}"
    return f"{value:.4f}" if metric.startswith("ece") else f"{100 * value:.1f}%"


def plot_confusion(evaluation: Evaluation, classes: Sequence[str], path: str | os.PathLike[str]) -> Path | None:
    """A row-normalised confusion matrix as a PNG (counts in the cells); None without matplotlib."""
    if evaluation.confusion is None:
        return None
    from edge_cls.quality.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None

    matrix = evaluation.confusion
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(c)[:14] for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), [str(c)[:14] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(f"{evaluation.name}: top-1 {100 * evaluation.metrics['top1']:.1f}% on {evaluation.images} images")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return save_figure(fig, path)
