import numpy as np
import pytest

from edge_cls.errors import ConfigError
from edge_cls.quality.confidence import (
    calibrate,
    class_thresholds,
    fit_temperature,
    nll,
    plot_reliability,
    risk_coverage,
)


def overconfident(n=2000, classes=5, seed=0, scale=4.0):
    """Logits whose softmax is overconfident by a known factor: the true temperature is ``scale``."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, classes))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return true_logits * scale, targets


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    logits, targets = overconfident()
    t = fit_temperature(logits, targets)
    assert 3.3 < t < 4.8
    fit = calibrate(logits, targets)
    assert fit.ece_after < fit.ece_before / 2 and fit.nll_after < fit.nll_before
    assert nll(logits, targets, t) <= min(nll(logits, targets, t * 1.1), nll(logits, targets, t / 1.1))


def test_temperature_keeps_the_argmax():
    logits, targets = overconfident(n=300)
    t = fit_temperature(logits, targets)
    assert ((logits / t).argmax(1) == logits.argmax(1)).all()


def test_bad_inputs():
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_f1_thresholds_separate_what_05_does_not():
    rng = np.random.default_rng(0)
    positives = rng.random((400, 2)) < 0.3
    scores = np.where(positives, rng.uniform(0.2, 0.4, positives.shape), rng.uniform(0.0, 0.19, positives.shape))
    logits = np.log(scores / (1 - scores))
    thresholds = class_thresholds(logits, positives)
    assert np.all((thresholds > 0.19) & (thresholds < 0.2))  # between the classes' score ranges
    precise = class_thresholds(logits, positives, precision=0.999)
    assert np.all(precise < 0.2)


def test_risk_coverage_and_the_threshold_for_a_risk():
    confidence = np.array([0.99, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 0])
    curve = risk_coverage(confidence, correct)
    assert curve.coverage.tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert curve.risk.tolist() == pytest.approx([0, 0, 0, 0.25, 0.4])
    assert curve.threshold_for_risk(0.0) == 0.8 and curve.threshold_for_risk(0.3) == 0.7
    assert curve.to_rows((1.0,))[0]["accuracy"] == pytest.approx(0.6)


def test_reliability_plot(tmp_path):
    logits, targets = overconfident(n=500)
    path = plot_reliability(logits, targets, fit_temperature(logits, targets), tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
