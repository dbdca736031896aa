"""The backend protocol and the classifier built on it.

A backend only loads a model file and turns a preprocessed float32 batch into logits. Reading
images, preprocessing, softmax/sigmoid, temperature, top-k and thresholds live once, in
:class:`Classifier`, above every backend.

Thread safety: a :class:`Classifier` may be shared by any number of threads on every backend.
Every backend's :meth:`Backend.run` is safe to call concurrently (ONNX Runtime's session is;
OpenVINO and TensorRT lend each call its own inference request or execution context), and
:meth:`Classifier.close` waits for the calls in flight before it releases the backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge_cls.artifact.embeddings import ArtifactEmbeddings
from edge_cls.artifact.integrity import ArtifactFiles
from edge_cls.artifact.manifest import Manifest
from edge_cls.errors import ArtifactError, ConfigError, EdgeClsError
from edge_cls.predictions import AnswerOptions, Decision, Prediction, decide
from edge_cls.preprocess import ImageInput, PreprocessSpec
from edge_cls.preprocess.placement import preprocessor

from .streaming import (
    ImageResult,
    Pipeline,
    ResultStream,
    check_top_k_options,
    classify_chunk,
    stack_inputs,
    stream_results,
)


class Backend(ABC):
    """Runs one model file. Subclasses import their library lazily, inside :meth:`open`.

    :meth:`run` must be safe to call from several threads at once; :meth:`close` is called once,
    after every call has returned.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # model file suffixes this backend can read
    #: The options that make this backend serve a stream well (``load(..., throughput=True)``):
    #: several batches in flight while other threads decode images beside it.
    throughput_options: ClassVar[dict[str, Any]] = {}
    #: Its model file is built on the device from ONNX (see :meth:`compile`), not shipped ready to run.
    compiles_on_device: ClassVar[bool] = False
    _precision: str = "f32"
    _device: str = "CPU"

    @classmethod
    @abstractmethod
    def open(cls, files: ArtifactFiles, manifest: Manifest, **options: Any) -> Backend:
        """Load the model from ``files``: the artifact's bytes, already checked against the manifest
        (never reopen paths); ``options`` are backend-specific (device, threads, ...)."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Float32 batch in the spec's layout in, (batch, classes) float32 logits out. Thread-safe."""

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """Like :meth:`run`, but the model outputs named ``names`` (e.g. logits and embeddings), in that
        order, from one inference. Thread-safe."""
        raise ArtifactError(f"the {self.name} backend returns only the logits, not {', '.join(names)}")

    @property
    def precision(self) -> str:
        """The numeric precision the backend actually runs the model in (e.g. ``f32``, ``i8+bf16``)."""
        return self._precision

    @property
    def device(self) -> str:
        """Where it runs (``CPU``, ``GPU``, ``CUDA``, an execution provider)."""
        return self._device

    @classmethod
    def native_precisions(cls, device: str = "CPU") -> frozenset[str]:
        """The precisions this backend computes natively on ``device`` of this machine (e.g. ``bf16``
        only on CPUs that have it): a candidate in another precision would only repeat FP32."""
        return frozenset({"fp32", "fp16", "int8"})

    @classmethod
    def compile(cls, onnx: bytes, input_shape: tuple[int, ...]) -> bytes:
        """For a backend whose model file is built on the device from an ONNX graph (a TensorRT engine):
        that file's bytes. Others run their files as they are."""
        raise ConfigError(f"the {cls.name} backend runs its model files as they are: there is nothing to build")

    def vendor_benchmark(self, model_path: Path, manifest: Manifest, *, iterations: int) -> dict[str, Any] | None:
        """The backend vendor's own latency tool on the same model file, batch 1, for a side by side
        with edge-cls's figures; None where the vendor has none."""
        return None

    @property
    def concurrency(self) -> int:
        """How many :meth:`run` calls the backend runs in parallel to good effect (its streams)."""
        return 1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources."""


def decision_for(manifest: Manifest) -> Decision:
    """How the artifact's manifest says to turn logits into answers: its fitted temperature or
    per-class thresholds, and its taxonomy."""
    from edge_cls.taxonomy import Taxonomy

    calibration = manifest.calibration or {}
    return Decision(
        task=manifest.task,
        temperature=float(calibration.get("temperature", 1.0)) if calibration.get("method") == "temperature" else 1.0,
        thresholds=tuple(calibration["thresholds"]) if calibration.get("method") == "thresholds" else None,
        taxonomy=Taxonomy.from_mapping(manifest.taxonomy, manifest.labels) if manifest.taxonomy else None,
    )


class ClassifierClosedError(EdgeClsError, RuntimeError):
    """A classifier was used after :meth:`Classifier.close`."""


class Classifier:
    """Classifies images with one artifact: preprocessing, backend, top-k.

    Safe to share between threads on every backend: ``predict``, ``predict_batch``, ``logits``
    and ``predict_stream`` may run concurrently. ``close()`` waits for calls in flight, is
    idempotent, and any later call raises :class:`ClassifierClosedError`.

    ``preprocess`` (default: the artifact's spec where its placement runs it: the float32 tensor,
    or uint8 pixels for a graph that normalises them itself) turns one image into one model input;
    replace it with an equivalent, faster implementation to measure or use one.
    """

    def __init__(self, backend: Backend, manifest: Manifest, path: Path, *,
                 embeddings: ArtifactEmbeddings | None = None) -> None:
        self._backend: Backend | None = backend
        self._backend_name = backend.name
        self.manifest = manifest
        self.path = path
        self.embedding_space = embeddings  # None: the artifact has no embeddings output
        self.preprocess: Callable[[ImageInput], np.ndarray] = preprocessor(manifest.spec, manifest.placement)
        self.decision = decision_for(manifest)
        self._state = threading.Condition()
        self._in_flight = 0

    @property
    def backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            raise self._closed_error()
        return backend

    @property
    def closed(self) -> bool:
        return self._backend is None

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

    def logits(self, batch: np.ndarray | list[np.ndarray], *, chunk: int = 64) -> np.ndarray:
        """Run a preprocessed batch and return (N, classes) logits: float32 (N, *spec.input_shape), or
        what the artifact's placement says its graph takes (uint8 pixels, NHWC); a list of inputs of
        different sizes (uint8 crops for a graph that resizes) runs one image at a time.

        Batches larger than ``chunk`` run in pieces, so a whole test split can be passed at once.
        """
        if isinstance(batch, list):
            return np.concatenate([self.logits(one[None]) for one in batch])
        batch = np.asarray(batch)
        self._check_input(batch)
        with self._running() as backend:
            if len(batch) <= chunk:
                return backend.run(np.ascontiguousarray(batch))
            return np.concatenate(
                [backend.run(np.ascontiguousarray(batch[i : i + chunk])) for i in range(0, len(batch), chunk)]
            )

    def logits_and_embeddings(self, batch: np.ndarray, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embedding vectors of a preprocessed batch, from one inference per chunk.

        The vectors are the artifact's embeddings output made what its manifest promises (normalised,
        reduced to its stored PCA basis: see :mod:`edge_cls.artifact.embeddings`). An artifact built
        without embeddings raises :class:`ConfigError`.
        """
        space = self.embedding_space
        if space is None:
            raise ConfigError(f"{self.path} has no embeddings output: rebuild it with this edge-cls (embeddings on)")
        batch = np.asarray(batch)
        self._check_input(batch)
        names = (self.manifest.output_name, space.output)
        with self._running() as backend:
            parts = [backend.run_outputs(np.ascontiguousarray(batch[i : i + chunk]), names)
                     for i in range(0, len(batch), chunk)] or [backend.run_outputs(batch, names)]
        return np.concatenate([p[0] for p in parts]), space.vectors(np.concatenate([p[1] for p in parts]))

    def embed(self, batch: np.ndarray, *, chunk: int = 64) -> np.ndarray:
        """The embedding vectors of a preprocessed batch (see :meth:`logits_and_embeddings`)."""
        return self.logits_and_embeddings(batch, chunk=chunk)[1]


    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        k: int = 5,
        *,
        batch_size: int = 32,
        **answer_options: Any,
    ) -> list[Prediction] | list[list[Prediction]]:
        """Top-k predictions for one image, or a list of top-k lists for a list of images.

        Scores are calibrated when the artifact carries a calibration (``calibrated=False`` for the
        raw ones; ``raw_score`` has them either way). ``min_confidence=0.6`` puts an explicit
        ``unknown`` answer (or, with a taxonomy, the finest ancestor that clears it) first when the
        top class is below it. ``threshold`` and ``temperature`` override the artifact's.
        A list is read ``batch_size`` images at a time, so memory does not grow with its length.
        A bad image raises :class:`InvalidImageError`; use :meth:`predict_batch` to keep going.
        """
        self._check_open()
        options = AnswerOptions(k=k, **answer_options)
        check_top_k_options(k, batch_size)
        if not isinstance(images, (list, tuple)):
            return self.answers(self.logits(self.preprocess(images)[None]), options)[0]
        results: list[list[Prediction]] = []
        for start in range(0, len(images), batch_size):
            batch = stack_inputs([self.preprocess(image) for image in images[start : start + batch_size]])
            results += self.answers(self.logits(batch), options)
        return results

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        k: int = 5,
        *,
        batch_size: int = 8,
        workers: int = 0,
        **answer_options: Any,
    ) -> list[ImageResult]:
        """Classify many images in batches; an image that cannot be read gets an error, the rest go on.

        ``workers`` > 0 decodes on that many threads while the backend runs (see :meth:`predict_stream`).
        ``answer_options`` are the options of :meth:`predict` (``min_confidence``, ``calibrated``, ...).
        """
        if workers == 0:
            self._check_open()
            options = AnswerOptions(k=k, **answer_options)
            check_top_k_options(k, batch_size)
            items = list(images)
            results: list[ImageResult] = []
            for start in range(0, len(items), batch_size):
                results += classify_chunk(self, items[start : start + batch_size], options)
            return results
        with self.predict_stream(images, k, batch_size=batch_size, workers=workers, **answer_options) as stream:
            return list(stream)

    def predict_stream(
        self,
        images: Iterable[ImageInput],
        k: int = 5,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        prefetch: int | None = None,
        **answer_options: Any,
    ) -> ResultStream:
        """Classify an iterable of images, possibly endless, as a pipeline; results come in input order.

        ``workers`` threads read and preprocess batches of ``batch_size`` images while the backend
        runs earlier batches (on :attr:`Backend.concurrency` threads). At most ``prefetch`` batches
        (default ``workers + backend.concurrency + 1``) are in flight, so memory stays flat on an endless
        iterator; the input is pulled only as results are consumed. An image that cannot be read
        gets an error in its :class:`ImageResult`; a backend failure raises. Closing the stream
        (``with``, ``close()``, or dropping it) stops and joins its threads. ``answer`` takes the
        options of :meth:`predict`.
        """
        self._check_open()
        options = AnswerOptions(k=k, **answer_options)
        check_top_k_options(k, batch_size)
        return ResultStream(stream_results(
            self, images, options=options, batch_size=batch_size, workers=workers, prefetch=prefetch,
        ))

    def pipeline(self, *, workers: int | None = None, max_pending: int | None = None) -> Pipeline:
        """A push-style pipeline: ``submit(images)`` returns a future of their :class:`ImageResult` list.

        For servers and callbacks; :meth:`predict_stream` is built on it. Close it when done.
        """
        self._check_open()
        return Pipeline(self, workers=workers, max_pending=max_pending)

    def top_k(self, logits: np.ndarray, k: int = 5, **answer_options: Any) -> list[list[Prediction]]:
        """Top-k predictions of each row of ``logits``, with this artifact's labels, task and calibration."""
        return self.answers(logits, AnswerOptions(k=k, **answer_options))

    def answers(self, logits: np.ndarray, options: AnswerOptions) -> list[list[Prediction]]:
        """The answers for each row of ``logits`` (see :func:`edge_cls.predictions.decide`)."""
        return decide(logits, self.labels, options.k, decision=options.applied_to(self.decision),
                      min_confidence=options.min_confidence, threshold=options.threshold)

    def sample_input(self, batch: int = 1, *, seed: int = 0) -> np.ndarray:
        """A random batch the model takes, to time it: the spec's float32 tensors, or uint8 pixels for an
        in-graph artifact (for a graph that resizes, the centre crop of a 640x480 frame)."""
        rng = np.random.default_rng(seed)
        if not self.manifest.placement.in_graph:
            return rng.standard_normal((batch, *self.spec.input_shape)).astype(np.float32)
        from edge_cls.preprocess._resize import plan

        shape = self.manifest.input_shape[1:]
        if -1 in shape:
            crop = plan((640, 480), self.spec, "a 640x480 frame")
            scale = 480 / crop.resized[1]
            shape = [round((crop.y.stop - crop.y.start) * scale), round((crop.x.stop - crop.x.start) * scale), 3]
        return rng.integers(0, 256, (batch, *shape), dtype=np.uint8)

    def _check_input(self, batch: np.ndarray) -> None:
        dtype, shape = np.dtype(self.manifest.placement.input_dtype), self.manifest.input_shape[1:]
        if (batch.dtype != dtype or batch.ndim != len(shape) + 1
                or any(want not in (-1, got) for want, got in zip(shape, batch.shape[1:]))):
            size = ", ".join("any" if side == -1 else str(side) for side in shape)
            raise ConfigError(
                f"expected a {dtype} batch of shape (N, {size}), got {batch.dtype} {tuple(batch.shape)}: preprocess "
                "images with the classifier's own preprocess (the artifact's spec, where its placement runs it)"
            )

    @contextmanager
    def _running(self) -> Iterator[Backend]:
        """Hold the backend open for one call; :meth:`close` waits until no call holds it."""
        with self._state:
            if self._backend is None:
                raise self._closed_error()
            self._in_flight += 1
            backend = self._backend
        try:
            yield backend
        finally:
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def _check_open(self) -> None:
        if self._backend is None:
            raise self._closed_error()

    def _closed_error(self) -> ClassifierClosedError:
        return ClassifierClosedError(f"classifier {self.path} is closed: load the artifact again to classify")

    def close(self) -> None:
        """Wait for calls in flight, then release the backend. Idempotent."""
        with self._state:
            backend, self._backend = self._backend, None
            while self._in_flight:
                self._state.wait()
        if backend is not None:
            backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        state = ", closed" if self.closed else ""
        return (f"Classifier({str(self.path)!r}, backend={self._backend_name!r}, precision={m.precision!r}, "
                f"classes={m.num_classes}{state})")


__all__ = ["Backend", "Classifier", "ClassifierClosedError", "ImageResult", "Pipeline", "ResultStream"]
