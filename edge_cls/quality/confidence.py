"""Confidence you can act on: temperature scaling, per-class thresholds, abstention curves.

A network's softmax scores are overconfident; temperature scaling (Guo et al. 2017) fits one
scalar T on held-out logits so that softmax(z / T) is calibrated, without changing any argmax.
Multi-label models get a decision threshold per class instead (F1-optimal, or the lowest that
reaches a target precision). Risk-coverage curves show what abstaining below a confidence costs.
Written with numpy only (SciPy's optimiser for one scalar is not worth the dependency), so the
same code serves the build and the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_cls.errors import ConfigError
from edge_cls.predictions import sigmoid, softmax
from edge_cls.quality.evaluate import ECE_BINS, expected_calibration_error

T_RANGE = (0.05, 20.0)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in T_RANGE minimising the NLL of softmax(logits / T): golden-section search on log T
    (the NLL is unimodal in log T for a fixed argmax)."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
        raise ConfigError("temperature scaling needs (N, classes) logits and N class indices, N > 0")
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, targets, np.exp(a)), nll(logits, targets, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, targets, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, targets, np.exp(b))
    return float(np.exp((lo + hi) / 2))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the split it was fitted on (and, optionally, another)."""

    temperature: float
    split: str
    images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float

    def to_dict(self) -> dict[str, object]:
        return {"method": "temperature", "temperature": self.temperature, "fitted_on": self.split,
                "images": self.images, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "nll_before": self.nll_before, "nll_after": self.nll_after}


def calibrate(logits: np.ndarray, targets: np.ndarray, *, split: str = "val") -> TemperatureFit:
    """Fit the temperature on ``logits``/``targets`` and report ECE and NLL before and after."""
    t = fit_temperature(logits, targets)
    return TemperatureFit(
        temperature=t, split=split, images=len(targets),
        ece_before=expected_calibration_error(softmax(logits), targets),
        ece_after=expected_calibration_error(softmax(logits, t), targets),
        nll_before=nll(logits, targets), nll_after=nll(logits, targets, t),
    )


def class_thresholds(logits: np.ndarray, targets: np.ndarray, *, precision: float | None = None) -> np.ndarray:
    """One sigmoid threshold per class of a multi-label model: F1-optimal on these images, or (with
    ``precision``) the lowest threshold whose precision reaches it (0.5 where no threshold can)."""
    scores, positives = sigmoid(np.asarray(logits, dtype=np.float64)), np.asarray(targets) > 0
    thresholds = np.full(scores.shape[1], 0.5)
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        ranked, hits = scores[order, c], positives[order, c]
        if not hits.any():
            continue
        tp = np.cumsum(hits)
        fp = np.cumsum(~hits)
        prec = tp / (tp + fp)
        if precision is None:
            f1 = 2 * tp / (tp + fp + hits.sum())
            best = int(np.argmax(f1))
        else:
            reaching = np.flatnonzero(prec >= precision)
            if not len(reaching):
                continue
            best = int(reaching[-1])  # the most images answered while precision still holds
        # between the last score kept and the next one, so equal scores fall on one side
        nxt = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds[c] = float((ranked[best] + nxt) / 2)
    return thresholds


@dataclass(frozen=True)
class RiskCoverage:
    """Abstaining below a confidence: what fraction is answered (coverage) and how often wrongly (risk)."""

    thresholds: np.ndarray  # confidence thresholds, descending
    coverage: np.ndarray
    risk: np.ndarray

    def threshold_for_risk(self, max_risk: float) -> float | None:
        """The lowest confidence threshold (most coverage) whose risk stays within ``max_risk``."""
        ok = np.flatnonzero(self.risk <= max_risk)
        return float(self.thresholds[ok[-1]]) if len(ok) else None

    def to_rows(self, coverages: tuple[float, ...] = (1.0, 0.99, 0.95, 0.9, 0.8, 0.7, 0.5)) -> list[dict[str, float]]:
        rows = []
        for target in coverages:
            i = int(np.searchsorted(self.coverage, target))
            i = min(i, len(self.coverage) - 1)
            rows.append({"coverage": float(self.coverage[i]), "min_confidence": float(self.thresholds[i]),
                         "accuracy": float(1 - self.risk[i])})
        return rows


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """The risk-coverage curve of answering only the images whose confidence is at least t, for
    every t among the confidences."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    conf, hits = np.asarray(confidence)[order], np.asarray(correct, dtype=np.float64)[order]
    answered = np.arange(1, len(conf) + 1)
    return RiskCoverage(thresholds=conf, coverage=answered / len(conf), risk=1 - np.cumsum(hits) / answered)


def plot_reliability(logits: np.ndarray, targets: np.ndarray, temperature: float,
                     path: str | os.PathLike[str], title: str = "") -> Path | None:
    """Reliability diagrams before and after temperature scaling, side by side; needs matplotlib."""
    from edge_cls.quality.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, t, name in ((axes[0], 1.0, "raw"), (axes[1], temperature, f"T = {temperature:.2f}")):
        probs = softmax(logits, t)
        confidence, correct = probs.max(1), probs.argmax(1) == targets
        edges = np.linspace(0, 1, ECE_BINS + 1)
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ECE_BINS - 1)
        centers = (edges[:-1] + edges[1:]) / 2
        accuracy = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(ECE_BINS)]
        ax.bar(centers, accuracy, width=1 / ECE_BINS, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ece = expected_calibration_error(probs, targets)
        ax.set_title(f"{name}: ECE {ece:.4f}")
        ax.set_xlabel("confidence (top-1 probability)")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title or "reliability")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_risk_coverage(curves: dict[str, RiskCoverage], path: str | os.PathLike[str], title: str = "") -> Path | None:
    """Risk (error rate of the answered images) against coverage, one line per model."""
    from edge_cls.quality.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve.coverage, 100 * curve.risk, label=name)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("risk (% of answered images wrong)")
    ax.set_title(title or "abstain below a confidence: risk vs coverage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
