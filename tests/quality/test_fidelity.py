"""The expected-drop measure: flips weighed by what the reference thought of the two answers."""

from __future__ import annotations

import numpy as np
import pytest

from edge_cls.errors import ConfigError
from edge_cls.quality.fidelity import Fidelity, confident_agreement, expected_drop

REFERENCE = np.array([[0.90, 0.05, 0.05],   # confident: a flip costs 0.85 of an image
                      [0.31, 0.30, 0.39],   # near-ties: a flip to 0 costs 0.08, to 1 costs 0.09
                      [0.10, 0.80, 0.10],
                      [0.20, 0.20, 0.60]])


def test_no_flip_costs_nothing():
    assert expected_drop(REFERENCE, REFERENCE.argmax(1)) == 0.0
    assert confident_agreement(REFERENCE, REFERENCE.argmax(1)) == (1.0, 3)


def test_a_flip_costs_the_difference_of_the_references_probabilities():
    assert expected_drop(REFERENCE, np.array([0, 0, 1, 2])) == pytest.approx(100 * 0.08 / 4)
    assert expected_drop(REFERENCE, np.array([0, 1, 1, 2])) == pytest.approx(100 * 0.09 / 4)
    assert expected_drop(REFERENCE, np.array([1, 2, 1, 2])) == pytest.approx(100 * (0.85 + 0.0) / 4)
    agreement, count = confident_agreement(REFERENCE, np.array([1, 0, 1, 2]))
    assert (agreement, count) == (pytest.approx(2 / 3), 3)  # image 1 is not confident: its flip is not counted


def test_fidelity_keeps_both_bars():
    fidelity = Fidelity.measure(REFERENCE, np.array([0, 0, 1, 2]), max_abs_tensor_error=0.01)
    assert fidelity.images == 4 and fidelity.agreement == 0.75 and fidelity.confident_agreement == 1.0
    assert fidelity.keeps(max_drop_points=2.0, min_confident_agreement=0.999)
    assert not fidelity.keeps(max_drop_points=1.0, min_confident_agreement=0.999)
    assert not Fidelity.measure(REFERENCE, np.array([1, 2, 1, 2])).keeps(max_drop_points=100,
                                                                          min_confident_agreement=0.999)
    assert fidelity.to_dict()["max_abs_tensor_error"] == 0.01


def test_no_confident_image():
    flat = np.full((2, 4), 0.25)
    assert confident_agreement(flat, np.array([1, 2])) == (None, 0)
    assert Fidelity.measure(flat, np.array([1, 2])).keeps(max_drop_points=0.0, min_confident_agreement=1.0)


@pytest.mark.parametrize("probabilities, top1", [
    (np.ones(3), np.zeros(3, int)), (REFERENCE, np.zeros(3, int)), (REFERENCE, np.array([0, 0, 3, 0])),
    (REFERENCE[:0], np.zeros(0, int))])
def test_bad_shapes_are_config_errors(probabilities, top1):
    with pytest.raises(ConfigError):
        expected_drop(probabilities, top1)
