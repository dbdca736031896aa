"""Per-image results, and the pipeline that overlaps reading images with inference.

Reading and preprocessing an image (decode, resize, normalise) often costs more than running a
small model on it. :class:`Pipeline` preprocesses batches on worker threads (Pillow and numpy
release the GIL for decoding, resizing and arithmetic) while runner threads run the backend on
earlier batches; the backend releases the GIL too. The same code path serves every backend,
since every backend's ``run`` is thread-safe; OpenVINO's throughput mode (several streams) shows
as ``backend.concurrency`` runner threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cls.errors import ConfigError, EdgeClsError, InvalidImageError
from edge_cls.predictions import AnswerOptions, Prediction, check_k
from edge_cls.preprocess import ImageInput

if TYPE_CHECKING:
    from .base import Classifier

logger = logging.getLogger(__name__)
THREAD_PREFIX = "edge-cls"


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image: its predictions, or the error that kept it from being classified."""

    source: str
    predictions: list[Prediction]
    error: EdgeClsError | None = None
    embedding: np.ndarray | None = None  # the artifact's embedding vector, when asked for (``embeddings=True``)

    @property
    def ok(self) -> bool:
        return self.error is None


def describe(image: ImageInput) -> str:
    """A short name for an input image, for results and error messages."""
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array{tuple(image.shape)}"
    return type(image).__name__


def check_top_k_options(k: int, batch_size: int = 1) -> None:
    check_k(k)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")


def image_error(image: ImageInput, error: Exception) -> EdgeClsError:
    """The error of one image that could not be read or preprocessed, as an :class:`EdgeClsError`.

    Any failure of reading one image (Pillow's own exceptions, a MemoryError on a huge image, ...)
    belongs to that image alone; the original stays chained as ``__cause__``.
    """
    if isinstance(error, EdgeClsError):
        return error
    logger.debug("reading %s failed", describe(image), exc_info=error)
    wrapped = InvalidImageError(f"{describe(image)} could not be read ({type(error).__name__}: {error})")
    wrapped.__cause__ = error
    return wrapped


@dataclass
class PreprocessedChunk:
    """A batch of images after preprocessing: the tensors of those that could be read, errors for the rest."""

    sources: list[str]
    tensors: np.ndarray | list[np.ndarray] | None  # (len(ok), *input_shape) (see stack_inputs), None: none read
    ok: list[int] = field(default_factory=list)  # positions in the chunk of the rows of ``tensors``
    errors: dict[int, EdgeClsError] = field(default_factory=dict)


def preprocess_chunk(preprocess: Callable[[ImageInput], np.ndarray], images: Sequence[ImageInput]) -> PreprocessedChunk:
    tensors, ok, errors = [], [], {}
    for position, image in enumerate(images):
        try:
            tensors.append(preprocess(image))
            ok.append(position)
        except Exception as e:  # one unreadable image must not sink the batch
            errors[position] = image_error(image, e)
    return PreprocessedChunk([describe(image) for image in images], stack_inputs(tensors), ok, errors)


def stack_inputs(tensors: list[np.ndarray]) -> np.ndarray | list[np.ndarray] | None:
    """One batch of per-image inputs; inputs of different sizes (uint8 crops for a graph that
    resizes them) stay a list, which :meth:`Classifier.logits` runs one image at a time."""
    if not tensors:
        return None
    if all(t.shape == tensors[0].shape for t in tensors):
        return np.stack(tensors)
    return tensors


def finish_chunk(classifier: Classifier, chunk: PreprocessedChunk, options: AnswerOptions) -> list[ImageResult]:
    """Run the backend on a preprocessed chunk (its failures propagate) and pair predictions with images."""
    results: list[ImageResult | None] = [None] * len(chunk.sources)
    if chunk.tensors is not None:
        vectors: Sequence[np.ndarray | None] = [None] * len(chunk.ok)
        if options.embeddings:
            logits, vectors = classifier.logits_and_embeddings(chunk.tensors)
        else:
            logits = classifier.logits(chunk.tensors)
        for position, preds, vector in zip(chunk.ok, classifier.answers(logits, options), vectors):
            results[position] = ImageResult(chunk.sources[position], preds, embedding=vector)
    for position, error in chunk.errors.items():
        results[position] = ImageResult(chunk.sources[position], [], error)
    return results  # type: ignore[return-value]  # every position was filled


def classify_chunk(classifier: Classifier, images: Sequence[ImageInput], options: AnswerOptions) -> list[ImageResult]:
    """Preprocess and classify one batch in the calling thread."""
    return finish_chunk(classifier, preprocess_chunk(classifier.preprocess, images), options)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class PipelineFullError(EdgeClsError, RuntimeError):
    """A pipeline already holds as many batches as it was allowed to."""


class Pipeline:
    """Preprocess on ``workers`` threads, run the backend on ``backend.concurrency`` threads.

    ``submit(images)`` returns at once with a :class:`~concurrent.futures.Future` of the images'
    :class:`ImageResult` list; at most ``max_pending`` submitted batches are unfinished at a time.
    ``close()`` lets running batches finish, cancels the rest and joins the threads.
    """

    def __init__(self, classifier: Classifier, *, workers: int | None = None, max_pending: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        runners = max(1, classifier.backend.concurrency)
        max_pending = workers + runners + 1 if max_pending is None else max_pending
        if workers < 1 or max_pending < 1:
            raise ConfigError(f"a pipeline needs workers >= 1 and max_pending >= 1, got {workers} and {max_pending}")
        self.classifier = classifier
        self.workers, self.runners, self.max_pending = workers, runners, max_pending
        self._readers = ThreadPoolExecutor(workers, thread_name_prefix=f"{THREAD_PREFIX}-read")
        self._runners = ThreadPoolExecutor(runners, thread_name_prefix=f"{THREAD_PREFIX}-run")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._closed = False

    def submit(
        self, images: Sequence[ImageInput], k: int = 5, *, options: AnswerOptions | None = None,
        block: bool = True, timeout: float | None = None, **answer_options: Any,
    ) -> Future[list[ImageResult]]:
        """Queue one batch. When ``max_pending`` batches are unfinished, wait for a free place
        (``block``, up to ``timeout`` s) or raise :class:`PipelineFullError`. ``options`` (or the
        keyword arguments of :class:`~edge_cls.predictions.AnswerOptions`) say what to answer."""
        options = options or AnswerOptions(k=k, **answer_options)
        if self._closed:
            raise PipelineFullError("the pipeline is closed")
        acquired = self._slots.acquire(timeout=timeout) if block else self._slots.acquire(blocking=False)
        if not acquired:
            raise PipelineFullError(f"{self.max_pending} batches are already waiting")
        result: Future[list[ImageResult]] = Future()
        result.add_done_callback(lambda _: self._slots.release())
        try:
            read = self._readers.submit(preprocess_chunk, self.classifier.preprocess, list(images))
        except RuntimeError:  # shut down between the check and here
            result.cancel()
            raise PipelineFullError("the pipeline is closed") from None
        read.add_done_callback(partial(self._preprocessed, result, options))
        return result

    def _preprocessed(self, result: Future, options: AnswerOptions, read: Future) -> None:
        if read.cancelled():
            result.cancel()
            return
        if not result.set_running_or_notify_cancel():
            return
        if read.exception() is not None:
            result.set_exception(read.exception())
            return
        try:
            self._runners.submit(self._run, result, read.result(), options)
        except RuntimeError as e:  # the runners were shut down: only after every reader finished
            result.set_exception(e)

    def _run(self, result: Future, chunk: PreprocessedChunk, options: AnswerOptions) -> None:
        try:
            result.set_result(finish_chunk(self.classifier, chunk, options))
        except BaseException as e:  # handed to whoever waits on the future
            result.set_exception(e)

    def close(self) -> None:
        """Finish the batches being read or run, cancel those still queued, join every thread. Idempotent."""
        self._closed = True
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._runners.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_results(
    classifier: Classifier, images: Iterable[ImageInput], *, options: AnswerOptions, batch_size: int,
    workers: int | None, prefetch: int | None,
) -> Iterator[ImageResult]:
    """The generator behind :meth:`Classifier.predict_stream`; ``workers=0`` runs in the caller's thread."""
    iterator = iter(images)
    if workers == 0:
        while chunk := list(islice(iterator, batch_size)):
            yield from classify_chunk(classifier, chunk, options)
        return
    with Pipeline(classifier, workers=workers, max_pending=prefetch) as pipeline:
        pending: deque[Future[list[ImageResult]]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < pipeline.max_pending:
                chunk = list(islice(iterator, batch_size))
                exhausted = len(chunk) < batch_size
                if chunk:
                    pending.append(pipeline.submit(chunk, options=options))
            if not pending:
                return
            yield from pending.popleft().result()


class ResultStream(Iterator[ImageResult]):
    """The results of :meth:`Classifier.predict_stream`, in input order; a context manager that
    stops the pipeline and joins its threads on exit."""

    def __init__(self, results: Iterator[ImageResult]) -> None:
        self._results = results

    def __next__(self) -> ImageResult:
        return next(self._results)

    def close(self) -> None:
        self._results.close()  # type: ignore[attr-defined]  # a generator

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
