"""The Open Inference Protocol (KServe v2, REST) over one artifact, standard library and numpy only.

Triton, OpenVINO Model Server, KServe and MLServer speak it, so their clients (``tritonclient.http``
among them) work against ``edge-cls serve`` unchanged::

    GET  /v2                                  server metadata (name, version, extensions)
    GET  /v2/health/live | /v2/health/ready   200 while live / ready (503 "ready": false while stopping)
    GET  /v2/models/{model}[/versions/1]      model metadata: inputs, outputs, what the scores are
    GET  /v2/models/{model}[/versions/1]/ready
    POST /v2/models/{model}[/versions/1]/infer

Two models, one input each (so no model lists alternatives): ``{artifact}`` takes encoded image
files (input ``IMAGE``, BYTES, shape [N]: JPEG, PNG, ... decoded and preprocessed by the artifact's
own spec); ``{artifact}-tensor`` takes preprocessed float32 tensors (input ``INPUT``, FP32, shape
[N, C, H, W] as the artifact's spec makes them). Both return ``PROBABILITIES`` (FP32 [N, classes]),
the calibrated probabilities; with Triton's classification extension (output parameter
``classification: k``) the top k as BYTES ``"<calibrated probability>:<index>:<label>"``, best
first, ranked as ``edge-cls predict`` ranks them. Tensors travel as JSON ``data`` or through the
binary-data extension (``Inference-Header-Content-Length``; BYTES elements as 4-byte little-endian
lengths followed by the bytes), which is how tritonclient sends them by default. Errors are the
protocol's ``{"error": "..."}`` with a 4xx/5xx status.

Written here rather than taken from a library: the servers that speak the protocol (Triton,
MLServer, KServe's model server) are whole frameworks, and the edge install must stay numpy,
pillow and one runtime.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import numpy as np

from edge_cls.predictions import probabilities, top_k

from .service import ClassifierService, RequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION = "1"
MAX_BATCH = 64  # images or tensors in one request
OUTPUT = "PROBABILITIES"
EXTENSIONS = ["binary_tensor_data", "classification"]
_FLOATS = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8"}


@dataclass(frozen=True)
class Model:
    """One model name the protocol exposes: its single input."""

    name: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any batch size

    @property
    def takes_images(self) -> bool:
        return self.datatype == "BYTES"


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


class InferenceProtocol:
    """The protocol's answers for one :class:`ClassifierService` (its routes, metadata and infer)."""

    def __init__(self, service: ClassifierService) -> None:
        self.service = service
        shape = tuple(service.classifier.spec.input_shape)
        self.models = {m.name: m for m in (Model(service.name, "IMAGE", "BYTES", (-1,)),
                                           Model(f"{service.name}-tensor", "INPUT", "FP32", (-1, *shape)))}

    # ---- routes
    def model_for(self, path: str) -> tuple[Model, str]:
        """The model a /v2/models/... path names and what follows it ('', 'ready' or 'infer')."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path}: see GET /v2 and /v2/models/{{model}}")
        name, rest = parts[2], parts[3:]
        if name not in self.models:
            raise RequestError(HTTPStatus.NOT_FOUND, f"unknown model {name!r}: this server has {sorted(self.models)}")
        if rest[:1] == ["versions"]:
            if rest[1:2] != [VERSION]:
                raise RequestError(HTTPStatus.NOT_FOUND, f"model {name!r} has only version {VERSION}")
            rest = rest[2:]
        if len(rest) > 1 or rest not in ([], ["ready"], ["infer"]):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path}")
        return self.models[name], (rest or [""])[0]

    def get(self, path: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """The answer to a GET under /v2."""
        stopping = self.service.stopping
        if path.rstrip("/") == "/v2":
            from edge_cls import __version__

            return HTTPStatus.OK, {"name": "edge-cls", "version": __version__, "extensions": EXTENSIONS}
        if path == "/v2/health/live":
            return HTTPStatus.OK, {"live": True}
        if path == "/v2/health/ready":
            return (HTTPStatus.SERVICE_UNAVAILABLE if stopping else HTTPStatus.OK), {"ready": not stopping}
        model, action = self.model_for(path)
        if action == "ready":
            return (HTTPStatus.SERVICE_UNAVAILABLE if stopping else HTTPStatus.OK), {"name": model.name,
                                                                                     "ready": not stopping}
        if action == "infer":
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"POST the inference request to {path}")
        return HTTPStatus.OK, self.metadata(model)

    def metadata(self, model: Model) -> dict[str, Any]:
        clf = self.service.classifier
        m = clf.manifest
        temperature = clf.decision.temperature
        if temperature != 1.0:
            scores = f"calibrated probabilities: softmax(logits / {temperature:g}), the artifact's fitted temperature"
        else:
            scores = "probabilities: " + ("softmax" if m.task == "single_label" else "sigmoid") + "(logits)"
        if clf.decision.thresholds is not None:
            scores += "; the artifact's per-class decision thresholds: " + ", ".join(
                f"{t:.3g}" for t in clf.decision.thresholds)
        given = ("encoded image files (JPEG, PNG, ...), one per element, decoded and preprocessed by the "
                 "artifact's own spec" if model.takes_images else
                 f"float32 tensors already preprocessed with the artifact's spec: {m.spec.to_dict()}")
        return {
            "name": model.name, "versions": [VERSION], "platform": f"edge-cls_{clf.backend.name}",
            "inputs": [{"name": model.input_name, "datatype": model.datatype, "shape": list(model.shape)}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(m.labels)]}],
            "parameters": {"input": given, OUTPUT: scores, "labels": m.labels, "task": m.task,
                           "classification": "<calibrated probability>:<index>:<label>, best first"},
        }

    # ---- infer
    def infer(self, model: Model, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        """Answer one infer request: (response headers, response body)."""
        request, binary = _split(body, headers.get(HEADER_LENGTH))
        data = _input(model, request, binary)
        logits = self.service.image_logits(data) if model.takes_images else self.service.classifier.logits(data)
        decision = self.service.classifier.decision
        outputs = []
        for name, binary_out, k in _requested_outputs(request):
            if k:
                ranked = top_k(logits, self.service.classifier.labels, k, task=decision.task,
                               temperature=decision.temperature)
                value: np.ndarray = np.array([[f"{p.score!r}:{p.index}:{p.label}" for p in row] for row in ranked],
                                             dtype=object)
            else:
                value = probabilities(logits, decision.task, decision.temperature).astype(np.float32)
            outputs.append((name, value, binary_out))
        return _response(model, request.get("id"), outputs)


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON inference header and the binary data after it."""
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise _bad(f"{HEADER_LENGTH} {header_length!r} must be the byte length of the JSON header "
                       f"(0..{len(body)})")
    try:
        request = json.loads(body[:length])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(f"the inference request is not valid JSON ({e}); binary tensors need {HEADER_LENGTH}") from None
    if not isinstance(request, dict):
        raise _bad("the inference request must be a JSON object with 'inputs'")
    return request, body[length:]


def _input(model: Model, request: dict[str, Any], binary: bytes) -> Any:
    """The request's one input, checked against the model: a list of encoded images, or a float32 array."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"model {model.name!r} takes exactly one input, {model.input_name!r}")
    tensor = inputs[0]
    if tensor.get("name") != model.input_name or tensor.get("datatype") not in _accepted(model):
        raise _bad(f"model {model.name!r} takes input {model.input_name!r} of datatype {model.datatype} and shape "
                   f"{list(model.shape)}, got {tensor.get('name')!r} {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _bad(f"input {model.input_name!r} needs a shape: a list of non-negative integers")
    _check_shape(model, shape)
    count = int(np.prod(shape))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or not 0 <= size <= len(binary) or len(binary) != size:
            raise _bad(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON header")
        raw = binary
    elif "data" in tensor:
        raw = tensor["data"]
    else:
        raise _bad(f"input {model.input_name!r} has neither 'data' nor binary_data_size")
    if model.takes_images:
        return _images(raw, count)
    return _floats(raw, tensor["datatype"], shape, model.input_name)


def _check_shape(model: Model, shape: list[int]) -> None:
    if model.takes_images:  # [N], or [N, 1] as some clients send a column of images
        fits, wanted = len(shape) in (1, 2) and shape[1:] in ([], [1]), "[N]"
    else:
        fits = len(shape) == len(model.shape) and shape[1:] == list(model.shape[1:])
        wanted = f"[N, {', '.join(map(str, model.shape[1:]))}]"
    if not fits or not 1 <= shape[0] <= MAX_BATCH:
        raise _bad(f"input {model.input_name!r} must have shape {wanted} with 1 <= N <= {MAX_BATCH}, got {shape}")


def _accepted(model: Model) -> tuple[str, ...]:
    return ("BYTES",) if model.takes_images else tuple(_FLOATS)


def _images(raw: bytes | list[Any], count: int) -> list[bytes]:
    """BYTES elements: from binary data (4-byte little-endian length, then the bytes) or JSON strings."""
    if isinstance(raw, (bytes, bytearray)):
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise _bad("BYTES data ends inside an element's 4-byte length")
            (n,) = struct.unpack_from("<I", raw, offset)
            items.append(bytes(raw[offset + 4:offset + 4 + n]))
            offset += 4 + n
            if offset > len(raw):
                raise _bad("BYTES data ends inside an element: its length says more bytes than were sent")
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        items = [x.encode("utf-8") for x in raw]
    else:
        raise _bad("send encoded images as BYTES through the binary-data extension (tritonclient: binary_data=True)")
    if len(items) != count:
        raise _bad(f"the input's shape holds {count} images but {len(items)} were sent")
    return items


def _floats(raw: bytes | list[Any], datatype: str, shape: list[int], name: str) -> np.ndarray:
    dtype = np.dtype(_FLOATS[datatype])
    count = int(np.prod(shape))
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) != count * dtype.itemsize:
            raise _bad(f"input {name!r} of shape {shape} needs {count * dtype.itemsize} bytes of {datatype}, "
                       f"got {len(raw)}")
        array = np.frombuffer(raw, dtype=dtype)
    else:
        try:
            array = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise _bad(f"input {name!r}: 'data' must be numbers") from None
        if array.size != count:
            raise _bad(f"input {name!r} of shape {shape} needs {count} numbers, got {array.size}")
    return array.reshape(shape).astype(np.float32)


def _requested_outputs(request: dict[str, Any]) -> list[tuple[str, bool, int]]:
    """(name, as binary, classification k) for each requested output; all outputs when none is named."""
    parameters = request.get("parameters") or {}
    default_binary = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    requested = request.get("outputs")
    if requested is None:
        return [(OUTPUT, default_binary, 0)]
    if not isinstance(requested, list) or not requested:
        raise _bad("'outputs' must be a list of {\"name\": ...} objects")
    out = []
    for item in requested:
        if not isinstance(item, dict) or item.get("name") != OUTPUT:
            raise _bad(f"unknown output {item.get('name') if isinstance(item, dict) else item!r}: the only output "
                       f"is {OUTPUT!r}")
        params = item.get("parameters") or {}
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise _bad(f"classification must be a non-negative integer, got {k!r}")
        out.append((OUTPUT, bool(params.get("binary_data", default_binary)), k))
    return out


def _response(model: Model, request_id: Any, outputs: list[tuple[str, np.ndarray, bool]]
              ) -> tuple[dict[str, str], bytes]:
    described, blobs = [], []
    for name, value, binary in outputs:
        datatype = "BYTES" if value.dtype == object else "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            blob = (b"".join(struct.pack("<I", len(s)) + s for s in (x.encode() for x in value.reshape(-1)))
                    if datatype == "BYTES" else value.astype("<f4").tobytes())
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist()
        described.append(entry)
    header: dict[str, Any] = {"model_name": model.name, "model_version": VERSION, "outputs": described}
    if isinstance(request_id, str) and request_id:
        header["id"] = request_id
    body = json.dumps(header).encode()
    if not blobs:
        return {"Content-Type": "application/json"}, body
    return {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(body))}, body + b"".join(blobs)
