"""Fixtures of the runtime tests: the TensorRT artifact, built on the spot where TensorRT can run."""

from __future__ import annotations

import importlib.util

import pytest


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None when it can. Only a missing ``tensorrt`` or ``cuda-python``,
    or no CUDA driver or device, skips: the two edge-cls modules are imported first, outside any
    ``try``, so a bug in them fails the suite instead of passing as "no GPU"."""
    from edge_cls.errors import BackendUnavailableError
    from edge_cls.export import tensorrt_export  # noqa: F401  (must import without tensorrt)
    from edge_cls.runtimes.tensorrt_backend import CudaError, _check, _cudart

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (NVIDIA GPUs only: pip install 'edge-cls[tensorrt]')"
    try:
        devices = _check(_cudart().cudaGetDeviceCount())
    except BackendUnavailableError as e:
        return f"cuda-python is not installed: {e}"
    except CudaError as e:
        return f"no CUDA driver or device ({e}): TensorRT engines need an NVIDIA GPU"
    return None if devices > 0 else "no CUDA device: TensorRT engines need an NVIDIA GPU"


@pytest.fixture(scope="session")
def tensorrt_here() -> None:
    """Skip, with the reason, where TensorRT cannot run."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tensorrt_artifact(tensorrt_here, tiny_checkpoint, digits_root, tmp_path_factory):
    """A TensorRT FP16 artifact of the tiny student; skipped (with the reason) where TensorRT cannot run."""
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
