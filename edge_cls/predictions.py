"""From logits to answers: softmax or sigmoid, calibration, top-k, thresholds, abstention and
class hierarchies.

:func:`top_k` is the plain ranking. :func:`answer` is what a classifier returns: calibrated
scores (the artifact's fitted temperature; the raw score stays in ``raw_score``), per-class
thresholds for multi-label models, an explicit ``unknown`` answer below ``min_confidence``, and,
with a taxonomy, the finest ancestor whose rolled-up probability clears it ("dog" when the breed
is uncertain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_cls.errors import ConfigError

if TYPE_CHECKING:
    from edge_cls.taxonomy import Taxonomy

TASKS = ("single_label", "multi_label")
UNKNOWN = "unknown"
KINDS = ("class", "ancestor", UNKNOWN)


@dataclass(frozen=True)
class Prediction:
    """One answer for one image: a class of the model, an ancestor of classes, or ``unknown``.

    ``score`` is the calibrated probability when the artifact carries a calibration (else the raw
    one); ``raw_score`` the uncalibrated probability. ``index`` is -1 for ancestors and unknown.
    """

    index: int
    label: str
    score: float
    raw_score: float | None = None
    kind: str = "class"
    path: tuple[str, ...] = field(default=())  # root ... label, with a taxonomy

    @property
    def unknown(self) -> bool:
        return self.kind == UNKNOWN

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"index": self.index, "label": self.label, "score": self.score}
        if self.raw_score is not None:
            data["raw_score"] = self.raw_score
        if self.kind != "class":
            data["kind"] = self.kind
        if self.path:
            data["path"] = list(self.path)
        return data


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


def check_k(k: object) -> int:
    """The one rule for ``k``, the number of answers asked for: a positive integer (more than the
    number of classes returns every class)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return k


def _check(logits: np.ndarray, labels: Sequence[str], k: int) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ConfigError(f"logits must be (batch, classes), got shape {logits.shape}")
    if logits.shape[1] != len(labels):
        raise ConfigError(f"the model gives {logits.shape[1]} classes but there are {len(labels)} labels")
    check_k(k)
    return logits


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
    logits = _check(logits, labels, k)
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


@dataclass(frozen=True, kw_only=True)
class AnswerOptions:
    """What the caller asks for: how many classes, and how to decide (see :func:`decide`)."""

    k: int = 5
    threshold: float | None = None  # multi-label: one threshold for every class (else the artifact's)
    min_confidence: float | None = None  # below it: an ancestor (with a taxonomy) or "unknown"
    calibrated: bool = True  # False: raw scores, ignoring the artifact's fitted temperature
    temperature: float | None = None  # override the artifact's temperature (None: the artifact's)
    embeddings: bool = False  # also return each image's embedding vector (artifacts with an embeddings output)

    def __post_init__(self) -> None:
        check_k(self.k)
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ConfigError(f"min_confidence is a probability in [0, 1], got {self.min_confidence!r}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold is a probability in [0, 1], got {self.threshold!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")

    def applied_to(self, decision: Decision) -> Decision:
        """The artifact's decision with this call's temperature override (or without calibration)."""
        from dataclasses import replace

        if self.temperature is not None:
            return replace(decision, temperature=self.temperature)
        return decision if self.calibrated else replace(decision, temperature=1.0)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """How an artifact turns logits into answers; built from its manifest."""

    task: str = "single_label"
    temperature: float = 1.0  # fitted on held-out images (single-label); 1.0: uncalibrated
    thresholds: tuple[float, ...] | None = None  # per-class decision thresholds (multi-label)
    taxonomy: Taxonomy | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < 1e3):
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}")


def decide(
    logits: np.ndarray,
    labels: Sequence[str],
    k: int = 5,
    *,
    decision: Decision | None = None,
    min_confidence: float | None = None,
    calibrated: bool = True,
    threshold: float | None = None,
) -> list[list[Prediction]]:
    """What a classifier returns for each image.

    Single-label: the top ``k`` classes by calibrated probability. With ``min_confidence`` and a
    top class below it, the first answer is the finest taxonomy ancestor whose rolled-up
    probability clears it (``kind="ancestor"``) or, failing that, ``unknown``; the top-k classes
    follow it. Multi-label: the classes at or above their threshold (``threshold``, else the
    artifact's per-class thresholds, else 0.5), best first, at most ``k``; ``unknown`` when none is.
    """
    decision = decision or Decision()
    logits = _check(logits, labels, k)
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ConfigError(f"min_confidence is a probability in [0, 1], got {min_confidence!r}")
    temperature = decision.temperature if calibrated else 1.0
    raw = probabilities(logits, decision.task, 1.0)
    probs = probabilities(logits, decision.task, temperature) if temperature != 1.0 else raw
    if decision.task == "multi_label":
        return _multi_label(probs, raw, labels, k, decision, threshold)
    rolled = decision.taxonomy.roll_up(probs) if decision.taxonomy is not None else None
    results = []
    for i, (row, raw_row) in enumerate(zip(probs, raw)):
        order = np.argsort(-row, kind="stable")[:min(k, len(row))]
        preds = [_class(int(j), labels, row, raw_row, decision) for j in order]
        if min_confidence is not None and preds[0].score < min_confidence:
            fallback = _ancestor(rolled[i], decision.taxonomy, min_confidence) if rolled is not None else None
            preds.insert(0, fallback or Prediction(-1, UNKNOWN, preds[0].score, preds[0].raw_score, kind=UNKNOWN))
        results.append(preds)
    return results


def _class(j: int, labels: Sequence[str], row: np.ndarray, raw_row: np.ndarray, decision: Decision) -> Prediction:
    path = decision.taxonomy.path(labels[j]) if decision.taxonomy is not None else ()
    raw_score = float(raw_row[j]) if decision.temperature != 1.0 else None
    return Prediction(j, str(labels[j]), float(row[j]), raw_score, path=path)


def _ancestor(rolled_row: np.ndarray, taxonomy: Taxonomy, min_confidence: float) -> Prediction | None:
    """The deepest inner node whose probability clears ``min_confidence`` (the most probable among equals)."""
    best: tuple[int, float, str] | None = None
    for node in taxonomy.nodes[len(taxonomy.labels):]:
        p = float(rolled_row[taxonomy.index(node)])
        if p >= min_confidence:
            key = (taxonomy.depth(node), p, node)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        return None
    return Prediction(-1, best[2], best[1], kind="ancestor", path=taxonomy.path(best[2]))


def _multi_label(probs: np.ndarray, raw: np.ndarray, labels: Sequence[str], k: int, decision: Decision,
                 threshold: float | None) -> list[list[Prediction]]:
    if threshold is not None:
        cut = np.full(probs.shape[1], threshold)
    elif decision.thresholds is not None:
        cut = np.asarray(decision.thresholds, dtype=np.float64)
    else:
        cut = np.full(probs.shape[1], 0.5)
    results = []
    for row, raw_row in zip(probs, raw):
        order = [int(j) for j in np.argsort(-row, kind="stable") if row[j] >= cut[j]][:k]
        preds = [_class(j, labels, row, raw_row, decision) for j in order]
        if not preds:
            top = int(np.argmax(row))
            preds = [Prediction(-1, UNKNOWN, float(row[top]), None, kind=UNKNOWN)]
        results.append(preds)
    return results
