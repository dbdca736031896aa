"""The backend protocol and the classifier built on it.

A backend only loads a model file and turns a preprocessed float32 batch into logits. Reading
images, preprocessing, softmax/sigmoid, temperature, top-k and thresholds live once, in
:class:`Classifier`, above every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge_cls.errors import ConfigError, EdgeClsError, InvalidImageError
from edge_cls.manifest import Manifest
from edge_cls.predictions import Prediction, top_k
from edge_cls.preprocess import ImageInput, PreprocessSpec


class Backend(ABC):
    """Runs one model file. Subclasses import their library lazily, inside :meth:`open`."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # model file suffixes this backend can read

    @classmethod
    @abstractmethod
    def open(cls, model_path: Path, manifest: Manifest, **options: Any) -> Backend:
        """Load ``model_path``; ``options`` are backend-specific (device, threads, ...)."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Float32 batch in the spec's layout in, (batch, classes) float32 logits out."""

    @property
    @abstractmethod
    def precision(self) -> str:
        """The numeric precision the backend actually runs the model in (e.g. ``f32``, ``i8+bf16``)."""

    @property
    def device(self) -> str:
        return "CPU"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources."""


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image of :meth:`Classifier.predict_batch`: predictions or an error."""

    source: str
    predictions: list[Prediction]
    error: EdgeClsError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Classifier:
    """Classifies images with one artifact: preprocessing, backend, top-k."""

    def __init__(self, backend: Backend, manifest: Manifest, path: Path) -> None:
        self.backend = backend
        self.manifest = manifest
        self.path = path

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.spec

    @property
    def precision(self) -> str:
        """The precision that actually runs on this machine, as the backend reports it."""
        return self.backend.precision

    def logits(self, batch: np.ndarray, *, chunk: int = 64) -> np.ndarray:
        """Run a preprocessed float32 batch (N, *spec.input_shape) and return (N, classes) logits.

        Batches larger than ``chunk`` run in pieces, so a whole test split can be passed at once.
        """
        batch = np.asarray(batch)
        expected = self.spec.input_shape
        if batch.dtype != np.float32 or batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ConfigError(
                f"expected a float32 batch of shape (N, {', '.join(map(str, expected))}), got "
                f"{batch.dtype} {tuple(batch.shape)}: preprocess images with the artifact's spec"
            )
        if len(batch) <= chunk:
            return self.backend.run(np.ascontiguousarray(batch))
        return np.concatenate(
            [self.backend.run(np.ascontiguousarray(batch[i : i + chunk])) for i in range(0, len(batch), chunk)]
        )

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        k: int = 5,
        *,
        threshold: float | None = None,
        temperature: float = 1.0,
    ) -> list[Prediction] | list[list[Prediction]]:
        """Top-k predictions for one image, or a list of top-k lists for a list of images.

        A bad image raises :class:`InvalidImageError`; use :meth:`predict_batch` to keep going.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        batch = np.stack([self.spec(image) for image in items]) if items else None
        if batch is None:
            return []
        results = self._top_k(self.logits(batch), k, threshold, temperature)
        return results[0] if single else results

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        k: int = 5,
        *,
        batch_size: int = 8,
        threshold: float | None = None,
        temperature: float = 1.0,
    ) -> list[ImageResult]:
        """Classify many images in batches; an unreadable image gets an error, the rest go on."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        results: list[ImageResult | None] = [None] * len(images)
        ready: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if not ready:
                return
            logits = self.logits(np.stack([tensor for _, tensor in ready]))
            for (index, _), preds in zip(ready, self._top_k(logits, k, threshold, temperature)):
                results[index] = ImageResult(_describe(images[index]), preds)
            ready.clear()

        for index, image in enumerate(images):
            try:
                ready.append((index, self.spec(image)))
            except InvalidImageError as e:
                results[index] = ImageResult(_describe(image), [], e)
            if len(ready) == batch_size:
                flush()
        flush()
        return [r for r in results if r is not None]

    def _top_k(self, logits: np.ndarray, k: int, threshold: float | None, temperature: float) -> list[list[Prediction]]:
        return top_k(logits, self.labels, k, task=self.manifest.task, temperature=temperature, threshold=threshold)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Classifier({str(self.path)!r}, backend={self.backend.name!r}, precision={m.precision!r}, "
                f"classes={m.num_classes})")


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array{tuple(image.shape)}"
    return type(image).__name__
