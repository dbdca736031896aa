"""The acceptance rule's estimator: what a changed answer costs, its interval over pictures, the guard."""

from __future__ import annotations

import numpy as np
import pytest

from edge_cls.calibration_data import picture_ids
from edge_cls.quality.acceptance import AcceptanceRule, judge, mcnemar_harm_p, measure, pictures_to_settle


def logits_for(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(probabilities, dtype=np.float64))


def test_a_near_tie_flip_costs_almost_nothing_and_a_confident_flip_almost_a_whole_image():
    reference = logits_for([[0.45, 0.43, 0.12], [0.98, 0.01, 0.01]])
    near_tie = logits_for([[0.43, 0.45, 0.12], [0.98, 0.01, 0.01]])
    confident = logits_for([[0.45, 0.43, 0.12], [0.01, 0.98, 0.01]])
    cheap, costly = measure(reference, near_tie), measure(reference, confident)
    assert cheap.flips == costly.flips == 1 and cheap.agreement == costly.agreement == 0.5
    assert cheap.expected_drop == pytest.approx(100 * 0.02 / 2, abs=1e-6)
    assert costly.expected_drop == pytest.approx(100 * 0.97 / 2, abs=1e-6)
    assert costly.confident_agreement == 0.0 and cheap.confident_agreement == 1.0 and cheap.confident_images == 1
    assert costly.kl > cheap.kl > 0


def test_the_expected_drop_is_the_accuracy_change_when_labels_follow_the_reference():
    """Where the reference's probabilities are calibrated (labels drawn from them), the mean paired drop
    over many labellings equals the expected drop computed without labels."""
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(5, 0.6), size=400)
    candidate = np.log(probabilities) + rng.normal(0, 0.4, probabilities.shape)  # a damaged model
    estimate = measure(np.log(probabilities), candidate).expected_drop
    drops, quick = [], AcceptanceRule(rounds=100)
    for _ in range(300):
        labels = np.array([rng.choice(5, p=p) for p in probabilities])
        drops.append(measure(np.log(probabilities), candidate, targets=labels, rule=quick).paired_drop)
    assert estimate > 1.0
    assert np.mean(drops) == pytest.approx(estimate, abs=0.05 * estimate + 0.1)


def test_the_interval_resamples_pictures_not_their_crops():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 2, (60, 4))
    candidate = reference + rng.normal(0, 1.5, reference.shape)
    crops = 6  # each picture seen as 6 identical crops
    repeated_ref, repeated_cand = np.repeat(reference, crops, 0), np.repeat(candidate, crops, 0)
    pictures = measure(repeated_ref, repeated_cand, groups=np.repeat(np.arange(60), crops))
    as_if_independent = measure(repeated_ref, repeated_cand)
    alone = measure(reference, candidate)
    assert pictures.pictures == 60 and as_if_independent.pictures == 360
    width = pictures.drop_high - pictures.drop_low
    assert width == pytest.approx(alone.drop_high - alone.drop_low, rel=0.2)
    assert width > 1.8 * (as_if_independent.drop_high - as_if_independent.drop_low)


def test_files_of_one_picture_share_an_id():
    ids = picture_ids(["a/cat.jpg", "a/cat.png", "a/cat.crop2.jpg", "a/dog.jpg", "b/cat.jpg"])
    assert ids[0] == ids[1] == ids[2] and len(set(ids)) == 3


def test_exact_mcnemar():
    assert mcnemar_harm_p(0, 0) == 1.0
    assert mcnemar_harm_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_harm_p(3, 3) == pytest.approx(42 / 64)


def test_judgement_decides_on_the_upper_end_and_says_what_would_settle_it():
    rule = AcceptanceRule(max_drop=0.3)
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 3, (30, 10))
    candidate = reference.copy()
    candidate[:2] = candidate[:2][:, ::-1]  # two changed answers among 30 pictures
    e = measure(reference, candidate, rule=rule)
    verdict = judge(e, rule)
    assert not verdict.meets
    if e.expected_drop < rule.max_drop:
        assert verdict.thin and verdict.settle_pictures == pictures_to_settle(e, rule) > 30
    same = measure(reference, reference.copy(), rule=rule)
    assert same.expected_drop == same.drop_high == 0 and judge(same, rule).meets
