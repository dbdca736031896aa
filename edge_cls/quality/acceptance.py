"""What a changed answer costs: the rule that accepts or refuses a lower-precision artifact.

A candidate (INT8, bf16, FP16, a repaired recipe) is judged against its float reference by the
top-1 accuracy it is expected to lose, in points, on check images that never served calibration:

- the **expected drop**: the mean over images of ``p_ref(top-1 of the reference) - p_ref(top-1 of
  the candidate)``, under the reference's own (temperature-calibrated where there is a fit)
  probabilities. If those probabilities are calibrated, it is an unbiased estimate of the change of
  top-1 accuracy, labels or not: a flip between near-ties costs almost nothing, a confident flip
  almost a whole image (difference of confidences, Guillory et al. 2021). It decides, labelled or
  not, because it is far less noisy than counting flips (on 150 images one flip is 0.67 points).
- its **uncertainty**: a paired bootstrap that resamples *source pictures* (files that share a stem,
  crops with their photo: never views of one picture as if they were independent), percentile
  interval at :attr:`AcceptanceRule.level`. ``auto`` decides on the interval's **upper end** (one-
  sided 95% by default): thin evidence (few pictures, costly flips) then ships the float artifact
  and says how many pictures would settle it, instead of shipping a guess.
- with labels, a **guard**: the paired count (right->wrong minus wrong->right) must show no
  significant harm under an exact one-sided McNemar test.
- recorded beside it, always: flips, agreement, agreement where the reference is confident (its
  top-1 probability >= 0.5), KL to the reference (Dutta et al. 2024), the pictures it rests on.
- ``min_agreement`` keeps the strict rule (top-1 agreement) for users who want it.

Torch-free (numpy and the standard library): the same rule runs in ``edge-cls export`` and, on the
device, in ``edge-cls choose``. This module is the one place for the rule, its defaults and its
sources.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edge_cls.errors import ConfigError
from edge_cls.predictions import softmax

DEFAULT_MAX_DROP = 0.3  # points of top-1 accuracy
CONFIDENT = 0.5  # the reference's top-1 probability from which an image counts as one it is sure of
DEFAULT_LEVEL = 0.90  # two-sided interval level: its upper end is a one-sided 95% bound
DEFAULT_HARM_ALPHA = 0.05  # McNemar: significant harm below this one-sided p-value
BOOTSTRAP_ROUNDS = 2000


@dataclass(frozen=True, kw_only=True)
class AcceptanceRule:
    """How much a lower-precision candidate may cost, and how sure we must be.

    ``max_drop``: points of top-1 accuracy the candidate may lose (its expected drop's upper bound
    must stay within it). ``min_agreement``: optional strict rule, top-1 agreement with the
    reference. ``level``: the bootstrap interval's level. ``harm_alpha``: the McNemar guard's level.
    """

    max_drop: float = DEFAULT_MAX_DROP
    min_agreement: float | None = None
    level: float = DEFAULT_LEVEL
    harm_alpha: float = DEFAULT_HARM_ALPHA
    rounds: int = BOOTSTRAP_ROUNDS
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 100):
            raise ConfigError(f"max_drop is in points of top-1 accuracy (0..100), got {self.max_drop!r}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement is a fraction (0..1), got {self.min_agreement!r}")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"level is an interval level in [0.5, 1), got {self.level!r}")
        if not 0 < self.harm_alpha < 1:
            raise ConfigError(f"harm_alpha is a significance level in (0, 1), got {self.harm_alpha!r}")
        if self.rounds < 100:
            raise ConfigError(f"rounds: at least 100 bootstrap rounds, got {self.rounds!r}")

    def describe(self) -> str:
        text = (f"expected top-1 drop <= {self.max_drop:g} pts at the upper end of its {100 * self.level:g}% "
                "interval over pictures")
        if self.min_agreement is not None:
            text += f", top-1 agreement >= {100 * self.min_agreement:g}%"
        return text


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """A candidate's answers against its reference's on one check set (points are of top-1 accuracy)."""

    images: int
    pictures: int
    flips: int
    agreement: float
    confident_images: int
    confident_agreement: float | None
    expected_drop: float
    drop_low: float
    drop_high: float
    kl: float
    labelled: bool = False
    reference_top1: float | None = None
    top1: float | None = None
    paired_drop: float | None = None  # (right->wrong - wrong->right) / n, points
    right_to_wrong: int | None = None
    wrong_to_right: int | None = None
    harm_p: float | None = None  # exact one-sided McNemar p-value for "the candidate is worse"

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    """The rule's verdict on some evidence: does it meet the bar, why, and what would settle it."""

    meets: bool
    why: str
    thin: bool = False  # the estimate is within the bar but its interval is not: more pictures could settle it
    settle_pictures: int | None = None


def change_costs(reference_probabilities: np.ndarray, candidate_top1: np.ndarray) -> np.ndarray:
    """What each image's answer is expected to cost: p_ref(the reference's top-1) - p_ref(the candidate's
    top-1), under the reference's probabilities (0 where the answers agree, at most 1)."""
    p, rows = reference_probabilities, np.arange(len(candidate_top1))
    return p[rows, p.argmax(1)] - p[rows, candidate_top1]


def measure(reference_logits: np.ndarray, candidate_logits: np.ndarray, *, temperature: float = 1.0,
            targets: np.ndarray | None = None, groups: np.ndarray | None = None,
            rule: AcceptanceRule | None = None) -> Evidence:
    """The evidence of one candidate on one check set.

    ``temperature``: the reference's fitted temperature (1.0 without a fit). ``targets``: true class
    indices, when the check images are labelled. ``groups``: the source picture of each image (see
    :func:`edge_cls.calibration_data.picture_ids`); by default every image is its own picture.
    """
    rule = rule or AcceptanceRule()
    reference_logits, candidate_logits = np.asarray(reference_logits), np.asarray(candidate_logits)
    if reference_logits.shape != candidate_logits.shape or reference_logits.ndim != 2 or not len(reference_logits):
        raise ConfigError(f"reference and candidate logits must be the same (images, classes) shape, got "
                          f"{reference_logits.shape} and {candidate_logits.shape}")
    n = len(reference_logits)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    p_ref = softmax(reference_logits, temperature)
    p_cand = softmax(candidate_logits, temperature)
    ref_top, cand_top = p_ref.argmax(1), p_cand.argmax(1)
    cost = change_costs(p_ref, cand_top)
    confident = p_ref.max(1) >= CONFIDENT
    low, high = _bootstrap_interval(cost, groups, rule)
    kl = kl_divergence(p_ref, p_cand)
    figures = dict(
        images=n, pictures=len(np.unique(groups)), flips=int((ref_top != cand_top).sum()),
        agreement=float((ref_top == cand_top).mean()), confident_images=int(confident.sum()),
        confident_agreement=float((ref_top == cand_top)[confident].mean()) if confident.any() else None,
        expected_drop=100 * float(cost.mean()), drop_low=100 * low, drop_high=100 * high, kl=max(kl, 0.0),
    )
    if targets is not None and np.asarray(targets).ndim == 1:
        figures.update(_labelled(ref_top == targets, cand_top == targets))
    return Evidence(**figures)


def kl_divergence(reference_probabilities: np.ndarray, candidate_probabilities: np.ndarray) -> float:
    """Mean over images of KL(reference || candidate), in nats."""
    p, q = reference_probabilities, candidate_probabilities
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def _labelled(ref_right: np.ndarray, cand_right: np.ndarray) -> dict[str, float | int | bool]:
    lost, gained = int((ref_right & ~cand_right).sum()), int((~ref_right & cand_right).sum())
    return dict(labelled=True, reference_top1=float(ref_right.mean()), top1=float(cand_right.mean()),
                paired_drop=100 * (lost - gained) / len(ref_right), right_to_wrong=lost, wrong_to_right=gained,
                harm_p=mcnemar_harm_p(lost, gained))


def mcnemar_harm_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact one-sided McNemar test: the chance of at least ``right_to_wrong`` losses among the changed
    answers if losing and gaining were equally likely (small: the candidate is significantly worse)."""
    changed = right_to_wrong + wrong_to_right
    if changed == 0:
        return 1.0
    return float(sum(math.comb(changed, k) for k in range(right_to_wrong, changed + 1)) / 2**changed)


def _bootstrap_interval(cost: np.ndarray, groups: np.ndarray, rule: AcceptanceRule) -> tuple[float, float]:
    """Percentile interval of the mean cost per image, resampling whole pictures (a ratio estimator:
    pictures with several crops weigh by their crops)."""
    if not np.any(cost):
        return 0.0, 0.0
    _, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=cost)
    counts = np.bincount(index).astype(np.float64)
    rng = np.random.default_rng(rule.seed)
    draws = rng.multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), size=rule.rounds)
    means = (draws @ sums) / (draws @ counts)
    tail = (1.0 - rule.level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def judge(evidence: Evidence, rule: AcceptanceRule) -> Judgement:
    """Apply the rule: the expected drop's upper bound within ``max_drop``; with labels no significant
    harm (McNemar); with ``min_agreement`` the strict agreement too."""
    e = evidence
    figures = describe(e)
    if rule.min_agreement is not None and e.agreement < rule.min_agreement - 1e-12:
        return Judgement(False, f"{figures}: agreement below the strict {100 * rule.min_agreement:g}%")
    if e.labelled and e.harm_p is not None and e.harm_p < rule.harm_alpha:
        return Judgement(False, f"{figures}: significantly more answers lost than gained (McNemar p={e.harm_p:.3g})")
    if e.drop_high <= rule.max_drop + 1e-9:
        return Judgement(True, figures)
    if e.expected_drop >= rule.max_drop:
        return Judgement(False, f"{figures}: expected drop over the {rule.max_drop:g}-pt bar")
    settle = pictures_to_settle(e, rule)
    return Judgement(False, f"{figures}: within the bar, but its interval is not on {e.pictures} pictures "
                            f"(about {settle} would settle it)", thin=True, settle_pictures=settle)


def pictures_to_settle(evidence: Evidence, rule: AcceptanceRule) -> int:
    """How many pictures would bring the interval's upper end within the bar, if the estimate held and
    the interval narrowed as 1/sqrt(pictures)."""
    e = evidence
    margin, half = rule.max_drop - e.expected_drop, e.drop_high - e.expected_drop
    if margin <= 0:
        return 0
    return int(math.ceil(e.pictures * (half / margin) ** 2))


def describe(e: Evidence) -> str:
    """The figures in one line: drop and interval, flips, agreement (and where the reference is sure), KL."""
    text = (f"expected drop {e.expected_drop:.2f} pts [{e.drop_low:.2f}, {e.drop_high:.2f}] on {e.pictures} pictures "
            f"({e.images} images), {e.flips} flips, agreement {100 * e.agreement:.1f}%")
    if e.confident_agreement is not None:
        text += f" ({100 * e.confident_agreement:.1f}% of {e.confident_images} confident)"
    if e.labelled and e.paired_drop is not None:
        text += f", top-1 {e.paired_drop:+.2f} pts paired ({e.right_to_wrong} lost, {e.wrong_to_right} gained)"
    return text + f", KL {e.kl:.2g}"
