"""The HTTP layer of ``edge-cls serve``: ``http.server`` threads, routes, bodies, errors as JSON.

Requests are read on ``http.server``'s threads and classified through one shared, thread-safe
:class:`~edge_cls.runtimes.Classifier`. At most ``max_queue`` requests are admitted at a time: the
rest get 503 with ``Retry-After`` at once, before their body is used. Connections waiting to be
accepted queue in the kernel (a listen backlog of :data:`LISTEN_BACKLOG`, not socketserver's 5),
so a burst of clients is answered, never reset. An upload over ``max_bytes`` gets 413 without
being kept, and every error is one line of JSON. ``stop()`` (SIGTERM or SIGINT under the CLI)
stops accepting, lets the requests in flight finish, then closes the classifier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge_cls.errors import ConfigError, EdgeClsError
from edge_cls.predictions import check_k

from .inference_protocol import InferenceProtocol
from .service import ClassifierService, RequestError, ServeOptions

if TYPE_CHECKING:
    from edge_cls.runtimes import Classifier

logger = logging.getLogger(__name__)
DRAIN_LIMIT = 64 * 2**20  # read and drop at most this much of a refused upload, so the client sees the answer
# Connections the kernel holds until the server accepts them. socketserver's default of 5 overflows
# under a burst (64 clients: 50 of 768 requests reset); a waiting connection costs only kernel memory,
# and Linux caps the value at net.core.somaxconn.
LISTEN_BACKLOG = 1024
RETRY_AFTER_S = 1
HANDLER_THREADS = 256  # connections handled at once; more wait (accepted) for a thread, none is refused
PROTOCOL_PREFIX = "/v2"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "edge-cls"
    error_content_type = "application/json"

    def setup(self) -> None:
        self.timeout = self.server.service.options.timeout  # a slow or silent client cannot hold a thread
        super().setup()

    @property
    def _oip(self) -> bool:
        return urlsplit(self.path).path.startswith(PROTOCOL_PREFIX)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        service = self.server.service
        if path.startswith(PROTOCOL_PREFIX):
            try:
                self._json(*self.server.protocol.get(path))
            except RequestError as e:
                self._error(e.status, e.message)
        elif path == "/health":
            self._json(HTTPStatus.SERVICE_UNAVAILABLE if service.stopping else HTTPStatus.OK,
                       {"status": "stopping" if service.stopping else "ok", "queued": service.queued})
        elif path == "/info":
            self._json(HTTPStatus.OK, service.info())
        elif path == "/predict":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "POST the image to /predict")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no endpoint {path}: use POST /predict, GET /health, GET /info, "
                        "or the Open Inference Protocol under /v2")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        service = self.server.service
        try:
            answer = self._route_post(url.path)
        except RequestError as e:
            self._error(e.status, e.message, self._length() if e.drain is None else e.drain)
            return
        if not service.admit():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, service.busy_message(), self._length(),
                        retry_after=RETRY_AFTER_S)
            return
        # The place is given back before the answer is written: a client that sends its next request
        # as soon as it reads this answer must find the place free.
        try:
            status, headers, body = answer(url.query)
        except RequestError as e:
            service.leave()
            self._error(e.status, e.message, e.drain)
        except EdgeClsError as e:  # the classifier closed under a shutdown
            service.leave()
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, " ".join(str(e).split()), retry_after=RETRY_AFTER_S)
        except Exception as e:  # a bug: logged with its traceback here, one line to the client
            service.leave()
            logger.exception("request failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
        else:
            service.leave()
            self._send(status, body, headers)

    def _route_post(self, path: str) -> Any:
        """What answers a POST to ``path`` (a RequestError for no such endpoint), chosen before admission."""
        if path == "/predict":
            return self._predict
        if path.startswith(PROTOCOL_PREFIX):
            model, action = self.server.protocol.model_for(path)
            if action != "infer":
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"POST inference requests to {path}/infer",
                                   drain=None)
            return lambda _query: self._infer(model)
        raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path}: POST images to /predict, or an inference "
                           "request to /v2/models/{model}/infer", drain=None)

    def _predict(self, query: str) -> tuple[HTTPStatus, dict[str, str], bytes]:
        service = self.server.service
        k = _query_k(query, service.options.k)
        image = self._read_image(service.options.max_bytes)
        body = json.dumps({"predictions": service.classify(image, k)}).encode()
        return HTTPStatus.OK, {"Content-Type": "application/json"}, body

    def _infer(self, model: Any) -> tuple[HTTPStatus, dict[str, str], bytes]:
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Encoding {encoding} is not supported: send the request uncompressed",
                               drain=self._length())
        body = self._read_body(self.server.service.options.max_bytes)
        headers, answer = self.server.protocol.infer(model, self.headers, body)
        return HTTPStatus.OK, headers, answer

    def _read_body(self, max_bytes: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the upload with a Content-Length, not chunked")
        length = self._length()
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length header")
        if length > max_bytes:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"upload of {length} bytes is over the limit of {max_bytes} bytes", drain=length)
        body = self.rfile.read(length)
        if len(body) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"upload ended after {len(body)} of {length} bytes")
        return body

    def _read_image(self, max_bytes: int) -> bytes:
        kind = self.headers.get_content_type() if "Content-Type" in self.headers else "application/octet-stream"
        # curl --data-binary sends x-www-form-urlencoded unless told otherwise: its body is the file all the same.
        raw = ("application/octet-stream", "application/x-www-form-urlencoded")
        if not (kind.startswith("image/") or kind in raw or kind == "multipart/form-data"):
            length = self._length()
            if length is not None and length > max_bytes:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"upload of {length} bytes is over the limit of {max_bytes} bytes", drain=length)
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Type {kind} is not an image: send image/* or application/octet-stream bytes "
                               "or a multipart/form-data file", drain=length)
        body = self._read_body(max_bytes)
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

    def _send(self, status: HTTPStatus, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: HTTPStatus, message: str, drain: int | None = 0, retry_after: int | None = None) -> None:
        """One line of JSON: ``{"error", "status"}``, or the protocol's ``{"error"}`` under /v2."""
        self._drain(drain)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        self._json(status, {"error": message} if self._oip else {"error": message, "status": int(status)}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may be gone
            self._json(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase, "status": code})

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], service: ClassifierService) -> None:
        self.service = service
        self.protocol = InferenceProtocol(service)
        # Connections are handed to reused threads: socketserver starts a new thread per connection and
        # waits for it to run, which under load (every thread wanting the GIL) made the accept loop, and
        # so every refusal behind it, hundreds of ms late.
        self._handlers = ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="edge-cls-http")
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._handlers.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        """Stop listening, then wait for the connections already accepted: requests in flight finish."""
        super().server_close()
        self._handlers.shutdown(wait=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that left before its answer is no error of ours; anything else is logged once,
        through logging (socketserver would print a traceback to stderr)."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("client %s left before its answer (%s)", client_address, error)
        else:
            logger.exception("request from %s failed", client_address)


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
