"""Embeddings in the artifact: the second output, its PCA basis, its parity with PyTorch, its drift reference.

:func:`plan_embeddings` runs once per export: it wraps the model so the ONNX graph returns
(logits, embeddings) (:mod:`edge_cls.training.features`), and fits the PCA basis every artifact of
the export shares, on the calibration images (the model's training images in ``edge-cls build``),
never on the check images whose projections become the drift reference: a basis fitted on the
reference itself would stretch the reference along its own axes and make fresh images look
shifted. Without calibration images, every other check image fits the basis and the rest are the
reference. :func:`add_embeddings` runs once per shipped artifact: it compares the artifact's
embeddings with PyTorch's on the check images (cosine per image; an FP32 artifact below
:data:`FP32_MIN_COSINE` is not written), and stores the basis, the drift reference and the
``embeddings`` manifest block. PCA is a few lines of numpy (an SVD), not worth a dependency.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_cls._fileio import write_bytes_atomic
from edge_cls.artifact.embeddings import (
    BASIS_FILE,
    OUTPUT_NAME,
    REFERENCE_FILE,
    ArtifactEmbeddings,
    basis_bytes,
    npy_bytes,
)
from edge_cls.artifact.manifest import Manifest, describe_files
from edge_cls.errors import ConfigError, ExportError

logger = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.999  # an FP32 artifact's embeddings must match PyTorch's this closely on every check image
MAX_REFERENCE = 1000  # drift reference images kept in the artifact (float16: 32 KB at 16 dims)
_CHUNK = 64


@dataclass(frozen=True, kw_only=True)
class EmbeddingSettings:
    """What the artifacts' embeddings output delivers."""

    dims: int | None = 64  # PCA dimensions of the vectors; None: the full features, not reduced
    normalize: bool = True  # L2-normalise (cosine geometry) before and after the projection
    drift_dims: int = 16  # leading principal coordinates the feature drift check compares

    def __post_init__(self) -> None:
        if self.dims is not None and self.dims < 1 or self.drift_dims < 1:
            raise ConfigError(f"embedding dims must be at least 1 (or None: full), got {self.dims}/{self.drift_dims}")


def embedding_settings(dims: int | str | None) -> EmbeddingSettings | None:
    """The settings for ``--embedding-dims``: N dimensions, ``full`` (no reduction), 0 (no embeddings output)."""
    if dims == 0:
        return None
    if dims is None or dims == "full":
        return EmbeddingSettings(dims=None)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 0:
        raise ConfigError(f"embedding dims must be a number >= 0 or 'full', got {dims!r}")
    return EmbeddingSettings(dims=dims)


@dataclass
class EmbeddingPlan:
    """What every artifact of one export shares: the wrapped model, the basis, PyTorch's reference embeddings."""

    settings: EmbeddingSettings
    model: torch.nn.Module  # forward(x) -> (logits, embeddings)
    source: str
    mean: np.ndarray
    axes: np.ndarray
    dims: int
    reduced: bool
    drift_dims: int
    basis_fit: dict[str, Any]
    reference_raw: np.ndarray  # PyTorch's raw embeddings of the check images
    reference_rows: np.ndarray  # the check images whose drift features form the reference
    seconds: float = 0.0
    outputs: tuple[str, ...] = field(default=(OUTPUT_NAME,))

    @property
    def basis(self) -> bytes:
        return basis_bytes(self.mean, self.axes)


def plan_embeddings(model: torch.nn.Module, check_batch: np.ndarray, calibration: np.ndarray | None,
                    settings: EmbeddingSettings | None) -> EmbeddingPlan | None:
    """The embeddings plan of an export, or None (turned off, or a model without an embedding)."""
    from edge_cls.training.features import WithEmbeddings, has_embeddings, logits_and_embeddings

    if settings is None or not has_embeddings(model):
        return None
    started = time.perf_counter()
    reference_raw = logits_and_embeddings(model, check_batch)[1]
    rows = np.arange(len(check_batch))
    if calibration is not None and len(calibration) >= 2:
        fit, fitted_on = logits_and_embeddings(model, calibration)[1], "calibration images"
    else:  # no calibration images: half the check images fit the basis, the other half is the drift reference
        fit, fitted_on, rows = reference_raw[0::2], "every other check image", rows[1::2]
    if len(rows) < 2 or len(fit) < 2:
        raise ExportError("embeddings need at least 4 check images (or 2 and 2 calibration images)")
    u = _unit(fit) if settings.normalize else fit
    mean = u.mean(0)
    _, singular, axes = np.linalg.svd(u - mean, full_matrices=False)
    features = fit.shape[1]
    available = min(len(fit) - 1, features)  # centred: n images span at most n - 1 axes
    reduced = settings.dims is not None and settings.dims < features
    dims = min(settings.dims, available) if reduced else features
    drift_dims = min(settings.drift_dims, available)
    variance = singular**2
    explained = float(variance[:dims].sum() / max(variance.sum(), 1e-30)) if reduced else 1.0
    keep = max(dims if reduced else 0, drift_dims)
    rng = np.random.default_rng(0)
    if len(rows) > MAX_REFERENCE:
        rows = np.sort(rng.choice(rows, MAX_REFERENCE, replace=False))
    wrapper = WithEmbeddings(model).eval()
    return EmbeddingPlan(settings=settings, model=wrapper, source=wrapper.source, mean=mean.astype(np.float32),
                         axes=axes[:keep].astype(np.float32), dims=dims, reduced=reduced, drift_dims=drift_dims,
                         basis_fit={"fitted_on": fitted_on, "images": int(len(fit)), "explained_variance": explained},
                         reference_raw=reference_raw, reference_rows=rows, seconds=time.perf_counter() - started)


def add_embeddings(manifest: Manifest, staging: Path, classifier: Any, plan: EmbeddingPlan, check_batch: np.ndarray,
                   split: str) -> None:
    """Check a shipped artifact's embeddings against PyTorch and store its basis, drift reference and block."""
    started = time.perf_counter()
    basis = plan.basis
    block: dict[str, Any] = {
        "output": OUTPUT_NAME, "source": plan.source, "features": int(plan.mean.shape[0]), "dims": plan.dims,
        "normalized": plan.settings.normalize, "reduced": plan.reduced, "basis": BASIS_FILE,
        "reference": REFERENCE_FILE, "drift_dims": plan.drift_dims, "space": hashlib.sha256(basis).hexdigest(),
        "basis_fit": plan.basis_fit,
    }
    space = ArtifactEmbeddings(output=OUTPUT_NAME, source=plan.source, normalized=plan.settings.normalize,
                               reduced=plan.reduced, mean=plan.mean, axes=plan.axes, drift_dims=plan.drift_dims,
                               reference=np.zeros((2, plan.drift_dims), np.float32), block=block)
    raw = _raw_embeddings(classifier, manifest.output_name, check_batch)
    block["parity"] = _parity(raw, plan.reference_raw, space, manifest.runtime_precision, split)
    if manifest.precision == "fp32" and block["parity"]["min_cosine"] < FP32_MIN_COSINE:
        raise ExportError(f"the FP32 artifact's embeddings differ from PyTorch's (cosine "
                          f"{block['parity']['min_cosine']:.5f} < {FP32_MIN_COSINE}); the artifact was not written")
    reference = space.drift_features(space.vectors(raw[plan.reference_rows])).astype(np.float16)
    block["drift"] = {"split": split, "images": int(len(reference)), "statistic": "mmd-rbf"}
    write_bytes_atomic(staging / BASIS_FILE, basis)
    write_bytes_atomic(staging / REFERENCE_FILE, npy_bytes(reference))
    extra = {BASIS_FILE, REFERENCE_FILE}
    manifest.files = [f for f in manifest.files if f.path not in extra] + describe_files(staging, sorted(extra))
    manifest.embeddings = block
    logger.info("embeddings: %d -> %d dims, min cosine with PyTorch %.5f (%.1fs, plan %.1fs)", block["features"],
                plan.dims, block["parity"]["min_cosine"], time.perf_counter() - started, plan.seconds)


def _raw_embeddings(classifier: Any, logits_name: str, batch: np.ndarray) -> np.ndarray:
    backend = classifier.backend
    names = (logits_name, OUTPUT_NAME)
    return np.concatenate([backend.run_outputs(np.ascontiguousarray(batch[i:i + _CHUNK]), names)[1]
                           for i in range(0, len(batch), _CHUNK)])


def _parity(raw: np.ndarray, reference: np.ndarray, space: ArtifactEmbeddings, ran_as: str, split: str
            ) -> dict[str, Any]:
    """Cosine per check image between the artifact's embeddings and PyTorch's: raw, and as delivered."""
    raw_cosine = np.sum(_unit(raw) * _unit(reference), axis=1)
    vector_cosine = np.sum(_unit(space.vectors(raw)) * _unit(space.vectors(reference)), axis=1)
    return {"reference": "pytorch-fp32", "split": split, "images": int(len(raw)), "runtime_precision": ran_as,
            "min_cosine": float(raw_cosine.min()), "mean_cosine": float(raw_cosine.mean()),
            "min_cosine_vectors": float(vector_cosine.min()), "mean_cosine_vectors": float(vector_cosine.mean())}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
