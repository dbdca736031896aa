"""``edge-cls serve``: an artifact as a small HTTP service, on the standard library and numpy alone.

    POST /predict[?k=5]   body: the image file (any Content-Type image/* or application/octet-stream),
                          or a multipart/form-data upload with one file  -> {"predictions": [...]}
    GET  /health          {"status": "ok", "queued": requests holding a place now}
    GET  /info            the artifact: model, backend, precision that ran, labels, input, limits
    /v2/...               the Open Inference Protocol (KServe v2), for tritonclient and other clients
                          (:mod:`.inference_protocol`)

:mod:`.service` holds the options, admission and classification; :mod:`.server` the HTTP layer.
"""

from __future__ import annotations

from .server import LISTEN_BACKLOG, Server
from .service import ClassifierService, RequestError, ServeOptions

__all__ = ["LISTEN_BACKLOG", "ClassifierService", "RequestError", "ServeOptions", "Server"]
