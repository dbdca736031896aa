import numpy as np
import pytest

from edge_cls.errors import ConfigError
from edge_cls.predictions import softmax
from edge_cls.quality.drift import compare, psi, summarize

LABELS = ["a", "b", "c", "d"]


def sample(n, seed, bias=None, sharp=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 4)) * sharp
    if bias is not None:
        logits = logits + np.asarray(bias)
    probs = softmax(logits)
    targets = probs.argmax(1)
    flip = rng.random(n) < 0.1
    targets[flip] = rng.integers(0, 4, flip.sum())
    return probs, targets


def test_same_distribution_is_a_small_shift():
    ref_probs, ref_targets = sample(2000, 0)
    reference = summarize(ref_probs, ref_targets)
    report = compare(reference, *sample(1000, 1)[:1], LABELS)
    assert report.verdict == "small" and report.confidence_shift < 0.05 and report.class_shift < 0.05
    assert abs(sum(reference["class_shares"]) - 1) < 1e-9 and reference["top1"] == pytest.approx(0.92, abs=0.03)


def test_a_class_mix_change_and_blurrier_images_are_flagged():
    reference = summarize(*sample(2000, 0))
    probs, targets = sample(1000, 2, bias=[3.0, 0, 0, 0], sharp=0.5)  # mostly class a, far less confident
    report = compare(reference, probs, LABELS, targets)
    assert report.verdict == "large" and report.class_shift > 0.25 and report.confidence_shift > 0.25
    assert report.movers[0]["label"] == "a" and report.movers[0]["share"] > report.movers[0]["reference_share"]
    assert "top1" in report.current and any("top-1:" in line for line in report.lines())


def test_psi_is_zero_for_equal_distributions():
    assert psi([0.25] * 4, [0.25] * 4) == pytest.approx(0)
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.25


def test_an_old_or_foreign_summary_is_a_clear_error():
    with pytest.raises(ConfigError, match="rebuild"):
        compare({"split": "val"}, softmax(np.zeros((2, 4))), LABELS)
