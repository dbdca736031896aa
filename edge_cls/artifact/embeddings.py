"""An artifact's embeddings: the model's second output, and how it becomes the vectors it promises.

An artifact built with embeddings has a second model output (``embeddings``): the pooled features
before the classifier head (timm's ``forward_head(..., pre_logits=True)``), or, for a zero-shot
artifact, CLIP's image embedding. The manifest's ``embeddings`` block says what they are and how
the runtime turns them into vectors::

    u = raw / |raw|                        (normalized: cosine geometry, as CLIP and retrieval use)
    v = P (u - mean)                       (reduced: a PCA basis fitted at build time, a listed file)
    vector = v / |v|  (or u, unreduced)

The basis file (``embeddings_basis.npy``: row 0 the mean, then one principal axis per row, float32)
always exists: with ``reduced`` false it still holds the leading axes, which drift checks use. The
drift reference file (``embeddings_reference.npy``, float16) holds the drift features of the
artifact's validation images (see :meth:`ArtifactEmbeddings.drift_features`). numpy only: this
runs on the device. Files are read from the artifact's checked bytes, never by path, and with
``allow_pickle=False``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_cls.artifact.schema import SCALARS, Fields, relative_path, scalar_map
from edge_cls.errors import ArtifactError, ConfigError

OUTPUT_NAME = "embeddings"
BASIS_FILE = "embeddings_basis.npy"
REFERENCE_FILE = "embeddings_reference.npy"
SOURCES = ("pre-logits", "clip-image")  # what the raw output is: timm's pooled features, or CLIP's image embedding
MAX_FEATURES = 65_536
MAX_REFERENCE = 10_000
_EPSILON = 1e-12


def read_embeddings(top: Fields, listed: set[str]) -> dict[str, Any] | None:
    """Validate the manifest's ``embeddings`` block (schema minor 2); its files must be listed."""
    block = top.optional_block("embeddings")
    if block is None:
        return None
    block.text("output", limit=1000)
    block.choice("source", SOURCES)
    features = block.integer("features", minimum=1, maximum=MAX_FEATURES)
    block.integer("dims", minimum=1, maximum=features)
    block.get("normalized", bool)
    block.get("reduced", bool)
    for key in ("basis", "reference"):
        name = relative_path(block, key, block.get(key, str))
        if name not in listed:
            raise block.fail(key, f"names {name!r}, which the manifest's 'files' does not list")
    block.integer("drift_dims", minimum=1, maximum=features)
    block.text("space", optional=True, limit=100)
    for key in ("parity", "basis_fit", "drift"):
        if block.data.get(key) is not None:
            scalar_map(block, key, block.data[key], SCALARS)
    return dict(block.data)


@dataclass(frozen=True)
class ArtifactEmbeddings:
    """The embedding space of one artifact: raw output -> vectors, and its drift reference."""

    output: str
    source: str
    normalized: bool
    reduced: bool
    mean: np.ndarray  # (features,)
    axes: np.ndarray  # (k, features): principal axes, by decreasing variance
    drift_dims: int
    reference: np.ndarray  # (images, drift_dims) drift features of the validation images
    block: Mapping[str, Any]

    @classmethod
    def from_artifact(cls, block: Mapping[str, Any], files: Mapping[str, bytes]) -> ArtifactEmbeddings:
        """From the manifest block (already validated) and the artifact's checked file bytes."""
        features, dims, drift = int(block["features"]), int(block["dims"]), int(block["drift_dims"])
        basis = _array(files, block["basis"])
        rows = (dims if block["reduced"] else 0)
        if basis.ndim != 2 or basis.shape[1] != features or len(basis) < 1 + max(rows, drift):
            raise ArtifactError(f"{block['basis']} holds a {basis.shape} basis; the manifest says {features} features "
                                f"and at least {max(rows, drift)} axes: rebuild the artifact")
        reference = _array(files, block["reference"])
        if reference.ndim != 2 or reference.shape[1] != drift or not 2 <= len(reference) <= MAX_REFERENCE:
            raise ArtifactError(f"{block['reference']} holds a {reference.shape} drift reference; expected "
                                f"(2..{MAX_REFERENCE}, {drift}): rebuild the artifact")
        return cls(output=str(block["output"]), source=str(block["source"]), normalized=bool(block["normalized"]),
                   reduced=bool(block["reduced"]), mean=basis[0].astype(np.float32), axes=basis[1:].astype(np.float32),
                   drift_dims=drift, reference=reference.astype(np.float32), block=dict(block))

    @property
    def dims(self) -> int:
        """The length of the vectors this artifact delivers."""
        return int(self.block["dims"])

    @property
    def space(self) -> str:
        """What makes two artifacts' vectors comparable: the basis they share (one export), as a name."""
        return str(self.block.get("space", ""))

    def vectors(self, raw: np.ndarray) -> np.ndarray:
        """(N, features) raw model output -> (N, dims) float32 vectors (see the module docstring)."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 2 or raw.shape[1] != self.mean.shape[0]:
            raise ConfigError(f"expected (N, {self.mean.shape[0]}) raw embeddings, got {raw.shape}")
        u = _unit(raw) if self.normalized else raw
        if not self.reduced:
            return u
        v = (u - self.mean) @ self.axes[: self.dims].T
        return _unit(v) if self.normalized else v

    def drift_features(self, vectors: np.ndarray) -> np.ndarray:
        """(N, dims) vectors -> (N, drift_dims): the leading principal coordinates, rounded as the stored
        reference is (float16), so that new images and the reference are treated exactly alike."""
        vectors = np.asarray(vectors, dtype=np.float32)
        leading = vectors[:, : self.drift_dims] if self.reduced else (vectors - self.mean) @ self.axes[
            : self.drift_dims].T
        return leading.astype(np.float16).astype(np.float32)


def basis_bytes(mean: np.ndarray, axes: np.ndarray) -> bytes:
    """The basis file's bytes: the mean, then the axes, one per row (float32 .npy)."""
    return npy_bytes(np.vstack([mean[None], axes]).astype(np.float32))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _array(files: Mapping[str, bytes], name: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(files[name]), allow_pickle=False)
    except (KeyError, OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"{name} is not a readable .npy array ({e}): rebuild the artifact") from e
    if array.dtype.kind != "f" or not np.isfinite(array).all():
        raise ArtifactError(f"{name} must hold finite floating-point numbers: rebuild the artifact")
    return array


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPSILON)
