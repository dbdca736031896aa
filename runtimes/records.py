"""Scores as metadata: one plain record per image, for search and filtering pipelines.

A record holds the image's path, its answers (calibrated scores, the raw ones, the taxonomy path),
whether it abstained, and which artifact said so (its name and the sha256 of its manifest, which
pins every file of it): enough to store beside the image and to filter on later, e.g. "keep the
images whose calibrated score for `cat` is at least 0.9".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edge_cls.artifact.manifest import MANIFEST_NAME
from edge_cls.preprocess import ImageInput

from .base import Classifier
from .streaming import ImageResult


def artifact_identity(classifier: Classifier) -> dict[str, str]:
    """The artifact's name, model, precision and the sha256 of its manifest (which lists every
    file's sha256: one hash pins the whole artifact)."""
    digest = hashlib.sha256((Path(classifier.path) / MANIFEST_NAME).read_bytes()).hexdigest()
    m = classifier.manifest
    identity = {"id": Path(classifier.path).name, "model": m.model_name, "precision": m.precision,
                "recipe": m.recipe, "manifest_sha256": digest}
    if classifier.embedding_space is not None:  # vectors of artifacts that share it are comparable
        identity["embedding_space"] = classifier.embedding_space.space
    return identity


def record(result: ImageResult, identity: dict[str, str]) -> dict[str, Any]:
    """One image's record (JSON-ready)."""
    out: dict[str, Any] = {"path": result.source, "artifact": identity}
    if not result.ok:
        out["error"] = str(result.error)
        return out
    preds = result.predictions
    out["predictions"] = [p.to_dict() for p in preds]
    out["abstained"] = bool(preds) and preds[0].kind != "class"
    answer = preds[0] if preds else None
    out["answer"] = None if answer is None else answer.label
    if answer is not None and answer.path:
        out["hierarchy"] = list(answer.path)
    if result.embedding is not None:  # float32, written with the shortest text that reads back exactly
        out["embedding"] = [float(str(value)) for value in result.embedding]
    return out


def records(classifier: Classifier, images: Iterable[ImageInput], k: int = 5, *, batch_size: int = 8,
            workers: int | None = None, **answer_options: Any) -> Iterator[dict[str, Any]]:
    """Records for every image, streamed in input order (memory stays flat however many there are);
    ``answer_options`` are the options of :meth:`Classifier.predict` (``min_confidence``, ...), and
    ``embeddings=True`` adds each image's embedding vector (``embedding``)."""
    identity = artifact_identity(classifier)
    with classifier.predict_stream(images, k, batch_size=batch_size, workers=workers, **answer_options) as stream:
        for result in stream:
            yield record(result, identity)
