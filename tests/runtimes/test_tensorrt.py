"""TensorRT round trip: needs the tensorrt package and a CUDA GPU, skipped (with the reason) elsewhere
(see ``tensorrt_missing`` in conftest: a bug in edge-cls's TensorRT modules fails, never skips)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tensorrt_here")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_matches_pytorch(
    precision, tiny_checkpoint, digits_root, tmp_path, test_images, pytorch_logits
):
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.runtimes import load
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    splits = load_splits(digits_root)
    batch, targets = preprocess_split(splits["test"], checkpoint.spec)
    [artifact] = export_artifacts(
        model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(["tensorrt"], [precision]),
        reference=ReferenceSet.from_model(model, batch, targets),
        calibration=CalibrationSet.from_split(splits["train"], checkpoint.spec, size=32),
    )
    minimum = {"fp32": 1.0, "fp16": 0.95, "int8": 0.9}[precision]
    assert artifact.manifest.parity["top1_agreement"] >= minimum
    with load(artifact.path) as clf:
        many = np.concatenate([batch] * 2)  # more images than the engine's largest batch profile
        got = clf.logits(many, chunk=len(many))
        assert got.shape == (len(many), 10)
        reference = pytorch_logits(test_images)
        tolerance = {"fp32": 1e-3, "fp16": 0.05, "int8": 0.5}[precision] * max(1.0, float(np.abs(reference).max()))
        inputs = np.stack([clf.preprocess(p) for p in test_images])
        np.testing.assert_allclose(clf.logits(inputs), reference, atol=tolerance)
        logits, vectors = clf.logits_and_embeddings(many)  # every engine output bound, two fetched
        np.testing.assert_array_equal(logits, got)
        assert vectors.shape == (len(many), clf.embedding_space.dims)
    statistic, bar = {"fp32": ("min", 0.999), "fp16": ("min", 0.99), "int8": ("mean", 0.95)}[precision]
    assert artifact.manifest.embeddings["parity"][f"{statistic}_cosine"] >= bar
