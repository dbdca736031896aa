"""``build`` end to end on tiny models: the multi-label path (distil, calibrate, export, bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_cls.artifact.manifest import load_manifest
from edge_cls.runtimes import load
from edge_cls.training.build import build
from edge_cls.training.config import BuildConfig, TrainConfig


@pytest.mark.slow
def test_multi_label_build_end_to_end(multilabel_root, tmp_path):
    out = tmp_path / "ml"
    config = BuildConfig(out_dir=out, data_dir=multilabel_root, teacher="test_vit", student="test_efficientnet",
                         input_size=32, compare_alone=False, calibration_size=16, bench_iterations=3,
                         recipes=("ort-qdq-u8s8", "ov-nncf-mixed"),
                         teacher_train=TrainConfig(epochs=1, batch_size=32, lr=5e-3),
                         student_train=TrainConfig(epochs=1, batch_size=32, lr=5e-3))
    result = build(config)
    names = sorted(p.name for p in (out / "artifacts").iterdir())
    assert names == ["onnx", "openvino"]
    classes = [f"d{i}" for i in range(10)] + ["even", "odd"]
    for name in names:
        manifest = load_manifest(out / "artifacts" / name)
        assert manifest.task == "multi_label" and sorted(manifest.labels) == sorted(classes)
        assert manifest.parity["images"] == 60 and manifest.parity["split"] == "val"
        assert any(row["precision"] == "int8" for row in manifest.search["candidates"])  # calibrated and tried
        assert manifest.calibration["method"] == "thresholds" and len(manifest.calibration["thresholds"]) == 12
        assert manifest.calibration["rule"] == "f1"  # the default, without min_precision
    with load(out / "artifacts" / "onnx") as clf:
        image = np.zeros((28, 28), np.uint8)
        preds = clf.predict(image, k=len(classes), threshold=0.0)  # every class, not only those over its threshold
        logits = clf.logits(clf.preprocess(image)[None])[0]
        sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))  # independent sigmoids, not a softmax
        np.testing.assert_allclose([p.score for p in preds], np.sort(sigmoid)[::-1], rtol=1e-6)
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 4 and all(r["p50_ms"] > 0 for r in report["rows"])
    assert result is not None and "student KD onnx " in result.table
