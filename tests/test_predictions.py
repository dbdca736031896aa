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


def test_answers_are_calibrated_and_keep_the_raw_score():
    from edge_cls.predictions import Decision, decide

    logits = np.array([[4.0, 0.0, 0.0]])
    [preds] = decide(logits, LABELS, k=2, decision=Decision(temperature=2.0))
    assert preds[0].label == "cat" and preds[0].score == pytest.approx(softmax(logits / 2)[0, 0])
    assert preds[0].raw_score == pytest.approx(softmax(logits)[0, 0]) and preds[0].raw_score > preds[0].score
    [uncalibrated] = decide(logits, LABELS, k=1, decision=Decision(temperature=2.0), calibrated=False)
    assert uncalibrated[0].score == pytest.approx(preds[0].raw_score)


def test_abstention_below_min_confidence():
    from edge_cls.predictions import decide

    sure, unsure = decide(np.array([[5.0, 0.0, 0.0], [0.2, 0.1, 0.0]]), LABELS, k=2, min_confidence=0.6)
    assert sure[0].label == "cat" and not sure[0].unknown
    assert unsure[0].unknown and unsure[0].label == "unknown" and unsure[0].index == -1
    assert [p.label for p in unsure[1:]] == ["cat", "dog"]  # the candidates are still there
    assert unsure[0].to_dict()["kind"] == "unknown"


def test_hierarchy_answers_at_the_finest_level_that_clears_the_threshold():
    from edge_cls.predictions import Decision, decide
    from edge_cls.taxonomy import Taxonomy

    labels = ["husky", "beagle", "tabby", "car"]
    tax = Taxonomy.from_mapping({"husky": "dog", "beagle": "dog", "tabby": "cat", "dog": "animal",
                                 "cat": "animal"}, labels)
    logits = np.log(np.array([[0.45, 0.4, 0.1, 0.05], [0.3, 0.05, 0.3, 0.35], [0.9, 0.05, 0.03, 0.02]]))
    results = decide(logits, labels, k=1, decision=Decision(taxonomy=tax), min_confidence=0.7)
    assert (results[0][0].label, results[0][0].kind) == ("dog", "ancestor")
    assert results[0][0].score == pytest.approx(0.85) and results[0][0].path == ("animal", "dog")
    assert results[1][0].unknown  # animal 0.65 < 0.7: no level clears it
    husky = results[2][0]
    assert (husky.label, husky.kind, husky.path) == ("husky", "class", ("animal", "dog", "husky"))


def test_multi_label_uses_per_class_thresholds():
    from edge_cls.predictions import Decision, decide

    logits = np.log(np.array([[0.3, 0.6, 0.2]]) / (1 - np.array([[0.3, 0.6, 0.2]])))
    decision = Decision(task="multi_label", thresholds=(0.25, 0.7, 0.1))
    [preds] = decide(logits, LABELS, k=3, decision=decision)
    assert [p.label for p in preds] == ["cat", "fox"]
    [none] = decide(logits, LABELS, k=3, decision=decision, threshold=0.9)
    assert none[0].unknown
