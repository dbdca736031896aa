import numpy as np
import pytest

from edge_cls.quality.evaluate import (
    average_precision,
    comparison_table,
    confusion_matrix,
    evaluate_logits,
    expected_calibration_error,
    plot_confusion,
    top_k_accuracy,
)


def test_single_label_metrics_on_known_logits():
    logits = np.array([[3.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1]])
    targets = np.array([0, 1, 1, 2])
    e = evaluate_logits(logits, targets, ["a", "b", "c"], name="m")
    assert e.metrics["top1"] == pytest.approx(0.5)
    assert e.metrics["top5"] == 1.0  # k larger than the classes
    assert top_k_accuracy(logits, targets, 2) == pytest.approx(1.0)
    assert e.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert e.per_class["b"] == {"recall": 0.5, "precision": 1.0, "support": 2}
    assert e.per_class["c"]["recall"] == 0.0 and e.per_class["c"]["precision"] == 0.0
    assert np.isnan(evaluate_logits(logits, targets, ["a", "b", "c", "d"]).per_class["d"]["precision"])
    assert e.metrics["mean_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    targets = np.zeros(10, dtype=int)
    calibrated = np.tile([0.8, 0.2], (10, 1))
    targets_calibrated = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(calibrated, targets_calibrated) == pytest.approx(0.0)
    overconfident = np.tile([0.99, 0.01], (10, 1))
    half = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(overconfident, half) == pytest.approx(0.49)
    assert expected_calibration_error(np.tile([1.0, 0.0], (10, 1)), targets) == pytest.approx(0.0)


def test_average_precision_and_multi_label_metrics():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    logits = np.array([[5.0, -5, 5], [-5, 5, -5], [5, 5, -5]])
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    e = evaluate_logits(logits, targets, ["x", "y", "z"])
    assert e.metrics["mAP"] == pytest.approx(np.mean([1.0, 1.0, 1.0]))
    # predicted positives: (0,0) (0,2) (1,1) (2,0) (2,1); true: 4 of them plus a false positive at (2,1)
    assert e.metrics["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 0))
    assert e.metrics["exact_match"] == pytest.approx(2 / 3)
    assert e.confusion is None and e.per_class["y"]["support"] == 1


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(np.array([1, 1]), np.array([0, 1]), 2).tolist() == [[0, 1], [0, 1]]


def test_comparison_table_and_confusion_png(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 50)
    a = evaluate_logits(rng.normal(size=(50, 4)) + 3 * np.eye(4)[targets], targets, list("abcd"), name="teacher")
    b = evaluate_logits(rng.normal(size=(50, 4)), targets, list("abcd"), name="student")
    table = comparison_table([a, b])
    assert "| metric | teacher | student |" in table and "| top1 |" in table and "Per-class recall" in table
    png = plot_confusion(a, list("abcd"), tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
