"""What the HTTP layer calls: options, admission, classification, description. No sockets here."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cls.errors import ConfigError

if TYPE_CHECKING:
    from edge_cls.runtimes import Classifier


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How the service listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see Server.url)
    k: int = 5  # classes per answer unless the request asks ?k=
    max_queue: int = 16  # requests admitted at once (running or waiting); more get 503
    max_bytes: int = 10 * 2**20  # largest upload; larger get 413
    workers: int | None = None  # decoding threads (default: up to 4, one per CPU)
    timeout: float = 30.0  # seconds a client may take to send its request

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.k < 1 or self.max_queue < 1 or self.max_bytes < 1 or self.timeout <= 0:
            raise ConfigError("k, max_queue, max_bytes and timeout must be positive")


class RequestError(Exception):
    """An HTTP answer other than 200: a status and a one-line message (``drain``: bytes of the
    request body still to be read and dropped before answering)."""

    def __init__(self, status: HTTPStatus, message: str, drain: int | None = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.drain = status, message, drain


class ClassifierService:
    """Admission (at most ``max_queue`` requests at a time), classification and description of one
    shared, thread-safe classifier."""

    def __init__(self, classifier: Classifier, options: ServeOptions) -> None:
        self.classifier = classifier
        self.options = options
        self.pipeline = classifier.pipeline(workers=options.workers, max_pending=options.max_queue)
        self._admitted = threading.BoundedSemaphore(options.max_queue)
        self._count_lock = threading.Lock()
        self.queued = 0  # requests holding a place now (reported by /health)
        self.stopping = False

    @property
    def name(self) -> str:
        """The artifact's directory name: the model name clients use."""
        return self.classifier.path.name

    def admit(self) -> bool:
        """Take one of ``max_queue`` places, or say no at once."""
        if self.stopping or not self._admitted.acquire(blocking=False):
            return False
        with self._count_lock:
            self.queued += 1
        return True

    def leave(self) -> None:
        with self._count_lock:
            self.queued -= 1
        self._admitted.release()

    def busy_message(self) -> str:
        if self.stopping:
            return "the server is stopping; retry on another replica or after it restarts"
        return f"busy: {self.options.max_queue} requests are already queued; retry shortly"

    def classify(self, image: bytes, k: int) -> list[dict[str, Any]]:
        """Top-k answers for one encoded image, decoded on the pipeline's worker threads."""
        [result] = self.pipeline.submit([image], k).result()
        if result.error is not None:
            raise RequestError(HTTPStatus.BAD_REQUEST, " ".join(str(result.error).split()))
        return [p.to_dict() for p in result.predictions]

    def image_logits(self, images: list[bytes]) -> np.ndarray:
        """Logits of a batch of encoded images; an unreadable one fails the request, naming its position.
        Decoded on the request's own thread: at most ``max_queue`` requests run at once."""
        from edge_cls.runtimes.streaming import preprocess_chunk

        chunk = preprocess_chunk(self.classifier.preprocess, images)
        if chunk.errors:
            position, error = min(chunk.errors.items())
            raise RequestError(HTTPStatus.BAD_REQUEST, f"image {position} of the request: "
                               + " ".join(str(error).split()))
        assert chunk.tensors is not None  # every image was read
        return self.classifier.logits(chunk.tensors)

    def info(self) -> dict[str, Any]:
        m, clf = self.classifier.manifest, self.classifier
        return {
            "artifact": clf.path.name, "model": m.model_name, "task": m.task, "backend": m.backend,
            "precision": m.precision, "runtime_precision": clf.precision, "device": clf.backend.device,
            "input_shape": list(m.spec.input_shape), "preprocess": m.spec.to_dict(), "labels": m.labels,
            "max_upload_bytes": self.options.max_bytes, "max_queue": self.options.max_queue, "k": self.options.k,
        }

    def close(self) -> None:
        self.pipeline.close()
        self.classifier.close()
