"""From logits to top-k predictions: softmax or sigmoid, temperature, thresholds, labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

TASKS = ("single_label", "multi_label")


@dataclass(frozen=True)
class Prediction:
    """One class of one image: its index, its label and its probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "score": self.score}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def probabilities(logits: np.ndarray, task: str = "single_label", temperature: float = 1.0) -> np.ndarray:
    """Class probabilities: softmax for single-label, independent sigmoids for multi-label."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature!r}")
    return softmax(logits, temperature) if task == "single_label" else sigmoid(logits, temperature)


def top_k(
    logits: np.ndarray,
    labels: Sequence[str],
    k: int = 5,
    *,
    task: str = "single_label",
    temperature: float = 1.0,
    threshold: float | None = None,
) -> list[list[Prediction]]:
    """Top-k predictions for each row of a (batch, classes) logit array.

    ``k`` larger than the number of classes returns every class. ``threshold`` drops
    predictions whose probability is below it (typical for multi-label use).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ConfigError(f"logits must be (batch, classes), got shape {logits.shape}")
    if logits.shape[1] != len(labels):
        raise ConfigError(f"the model gives {logits.shape[1]} classes but there are {len(labels)} labels")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    probs = probabilities(logits, task, temperature)
    k = min(k, probs.shape[1])
    # argsort on the negated scores, stable, so ties keep the lower class index first.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = []
    for row, indices in zip(probs, order):
        preds = [Prediction(int(i), str(labels[i]), float(row[i])) for i in indices]
        if threshold is not None:
            preds = [p for p in preds if p.score >= threshold]
        results.append(preds)
    return results
