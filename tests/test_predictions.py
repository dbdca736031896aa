import numpy as np
import pytest

from edge_cls.errors import ConfigError
from edge_cls.predictions import probabilities, softmax, top_k

LABELS = ["cat", "dog", "fox"]


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and p[0, 0] == pytest.approx(1.0)


def test_top_k_orders_by_score_with_labels():
    preds = top_k(np.array([[0.1, 2.0, 1.0]]), LABELS, k=2)[0]
    assert [p.label for p in preds] == ["dog", "fox"] and [p.index for p in preds] == [1, 2]
    assert preds[0].score > preds[1].score


def test_k_larger_than_classes_returns_all():
    assert len(top_k(np.zeros((1, 3)), LABELS, k=10)[0]) == 3


def test_ties_keep_lower_index_first():
    assert [p.index for p in top_k(np.zeros((1, 3)), LABELS, k=3)[0]] == [0, 1, 2]


def test_temperature_softens():
    sharp = top_k(np.array([[2.0, 0.0, 0.0]]), LABELS, k=1)[0][0].score
    soft = top_k(np.array([[2.0, 0.0, 0.0]]), LABELS, k=1, temperature=4.0)[0][0].score
    assert soft < sharp


def test_multi_label_uses_independent_sigmoids_and_threshold():
    logits = np.array([[3.0, 3.0, -3.0]])
    probs = probabilities(logits, "multi_label")
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    preds = top_k(logits, LABELS, k=3, task="multi_label", threshold=0.5)[0]
    assert [p.label for p in preds] == ["cat", "dog"]


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 1.5}, {"task": "ranking"}, {"temperature": 0.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        top_k(np.zeros((1, 3)), LABELS, **{"k": 1, **kwargs})


def test_label_count_must_match():
    with pytest.raises(ConfigError, match="labels"):
        top_k(np.zeros((1, 4)), LABELS)
