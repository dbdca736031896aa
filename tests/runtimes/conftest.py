"""Fixtures of the runtime tests: the TensorRT artifact, built on the spot where TensorRT can run."""

from __future__ import annotations

import importlib.util

import pytest


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (NVIDIA GPUs only: pip install 'edge-cls[tensorrt]')"
    try:
        from edge_cls.runtimes.tensorrt_backend import _check, _cudart

        if _check(_cudart().cudaGetDeviceCount()) > 0:
            return None
    except Exception:  # no cuda-python, no driver, no device
        pass
    return "no CUDA device: TensorRT engines need an NVIDIA GPU"


@pytest.fixture(scope="session")
def tensorrt_artifact(tiny_checkpoint, digits_root, tmp_path_factory):
    """A TensorRT FP16 artifact of the tiny student; skipped (with the reason) where TensorRT cannot run."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    batch, targets = preprocess_split(load_splits(digits_root)["test"], checkpoint.spec)
    [artifact] = export_artifacts(
        model, checkpoint.spec, checkpoint.labels, tmp_path_factory.mktemp("tensorrt"),
        resolve_targets(["tensorrt"], ["fp16"]), reference=ReferenceSet.from_model(model, batch, targets),
    )
    return artifact.path
