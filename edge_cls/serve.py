"""``edge-cls serve``: an artifact as a small HTTP service, on the standard library alone.

    POST /predict[?k=5]   body: the image file (any Content-Type image/* or application/octet-stream),
                          or a multipart/form-data upload with one file  -> {"predictions": [...]}
    GET  /health          {"status": "ok", "queued": requests holding a place now}
    GET  /info            the artifact: model, backend, precision that ran, labels, input, limits

Requests are read on ``http.server``'s threads and classified through one shared, thread-safe
:class:`~edge_cls.runtimes.Classifier` and its :class:`~edge_cls.runtimes.Pipeline`, which decodes
on worker threads while the backend runs. At most ``max_queue`` requests are admitted at a time
(the rest get 503 at once), an upload over ``max_bytes`` gets 413 without being kept, and every
error is one line of JSON. ``stop()`` (SIGTERM or SIGINT under the CLI) stops accepting, lets the
requests in flight finish, then closes the classifier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge_cls.errors import ConfigError, EdgeClsError
from edge_cls.predictions import check_k

if TYPE_CHECKING:
    from edge_cls.runtimes import Classifier

logger = logging.getLogger(__name__)
DRAIN_LIMIT = 64 * 2**20  # read and drop at most this much of a refused upload, so the client sees the answer


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
    """An HTTP answer other than 200: a status and a one-line message."""

    def __init__(self, status: HTTPStatus, message: str, drain: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.drain = status, message, drain


class ClassifierService:
    """What the HTTP layer calls: admission, classification, description. No sockets here."""

    def __init__(self, classifier: Classifier, options: ServeOptions) -> None:
        self.classifier = classifier
        self.options = options
        self.pipeline = classifier.pipeline(workers=options.workers, max_pending=options.max_queue)
        self._admitted = threading.BoundedSemaphore(options.max_queue)
        self._count_lock = threading.Lock()
        self.queued = 0  # requests holding a place now (reported by /health)
        self.stopping = False

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

    def classify(self, image: bytes, k: int) -> list[dict[str, Any]]:
        [result] = self.pipeline.submit([image], k).result()
        if result.error is not None:
            raise RequestError(HTTPStatus.BAD_REQUEST, " ".join(str(result.error).split()))
        return [p.to_dict() for p in result.predictions]

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


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "edge-cls"
    error_content_type = "application/json"

    def setup(self) -> None:
        self.timeout = self.server.service.options.timeout  # a slow or silent client cannot hold a thread
        super().setup()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            stopping = self.server.service.stopping
            self._json(HTTPStatus.SERVICE_UNAVAILABLE if stopping else HTTPStatus.OK,
                       {"status": "stopping" if stopping else "ok", "queued": self.server.service.queued})
        elif path == "/info":
            self._json(HTTPStatus.OK, self.server.service.info())
        elif path == "/predict":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "POST the image to /predict")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no endpoint {path}: use POST /predict, GET /health or GET /info")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._error(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}: POST images to /predict", self._length())
            return
        service = self.server.service
        if not service.admit():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                        f"busy: {service.options.max_queue} requests are already queued; retry shortly",
                        self._length(), retry_after=1)
            return
        # The place is given back before the answer is written: a client that sends its next request
        # as soon as it reads this answer must find the place free.
        try:
            k = _query_k(url.query, service.options.k)
            image = self._read_image(service.options.max_bytes)
            predictions = service.classify(image, k)
        except RequestError as e:
            service.leave()
            self._error(e.status, e.message, e.drain)
        except EdgeClsError as e:  # the classifier closed under a shutdown
            service.leave()
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, " ".join(str(e).split()))
        except Exception as e:  # a bug: logged with its traceback here, one line to the client
            service.leave()
            logger.exception("request failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
        else:
            service.leave()
            self._json(HTTPStatus.OK, {"predictions": predictions})

    def _read_image(self, max_bytes: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the upload with a Content-Length, not chunked")
        length = self._length()
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length header")
        if length > max_bytes:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"upload of {length} bytes is over the limit of {max_bytes} bytes", drain=length)
        kind = self.headers.get_content_type() if "Content-Type" in self.headers else "application/octet-stream"
        # curl --data-binary sends x-www-form-urlencoded unless told otherwise: its body is the file all the same.
        raw = ("application/octet-stream", "application/x-www-form-urlencoded")
        if not (kind.startswith("image/") or kind in raw or kind == "multipart/form-data"):
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Type {kind} is not an image: send image/* or application/octet-stream bytes "
                               "or a multipart/form-data file", drain=length)
        body = self.rfile.read(length)
        if len(body) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"upload ended after {len(body)} of {length} bytes")
        if not body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty upload: send the image file as the request body")
        return _multipart_file(self.headers["Content-Type"], body) if kind == "multipart/form-data" else body

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def _drain(self, length: int | None) -> None:
        """Read and drop an unwanted body, so that the client, still sending, gets our answer."""
        remaining = min(length or 0, DRAIN_LIMIT)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 2**16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _json(self, status: HTTPStatus, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str, drain: int | None = 0, retry_after: int | None = None) -> None:
        self._drain(drain)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        self._json(status, {"error": message, "status": int(status)}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may be gone
            self._json(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase, "status": code})

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads: requests in flight finish
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: ClassifierService) -> None:
        self.service = service
        super().__init__(address, _Handler)


class Server:
    """The HTTP service around a classifier: ``start()``, then ``stop()`` (or use it as a context manager)."""

    def __init__(self, classifier: Classifier, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.service = ClassifierService(classifier, self.options)
        try:
            self._http = _HTTPServer((self.options.host, self.options.port), self.service)
        except OSError as e:
            self.service.close()
            raise ConfigError(f"cannot listen on {self.options.host}:{self.options.port} ({e.strerror or e})") from e
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edge-cls-http")
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new requests, let those in flight finish, close the classifier. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.service.stopping = True
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()  # joins the request threads
        self.service.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _query_k(query: str, default: int) -> int:
    values = parse_qs(query).get("k") or parse_qs(query).get("topk")
    if not values:
        return default
    try:
        return check_k(int(values[-1]))
    except ValueError:  # not a number, or ConfigError from the one rule for k
        raise RequestError(HTTPStatus.BAD_REQUEST, f"k must be a positive integer, got {values[-1]!r}") from None


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The first file of a multipart/form-data body (what ``curl -F image=@cat.jpg`` sends)."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if message.is_multipart():
        for part in message.iter_parts():
            if part.get_filename() is not None or part.get_content_maintype() == "image":
                payload = part.get_payload(decode=True)
                if payload:
                    return payload
    raise RequestError(HTTPStatus.BAD_REQUEST, "the multipart upload has no file part: send the image as a file field")
