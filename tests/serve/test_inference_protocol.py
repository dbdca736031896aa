"""The Open Inference Protocol as other people's clients speak it: the real ``tritonclient.http``
against a real server on 127.0.0.1, answers compared with ``predict``'s."""

from __future__ import annotations

import http.client
import json
import socket
import time

import numpy as np
import pytest

from edge_cls.runtimes import load
from edge_cls.serve import ServeOptions, Server

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'edge-cls[tritonclient]' (in [dev])")
from tritonclient.utils import InferenceServerException  # noqa: E402

ARTIFACT = "openvino-int8"
K = 3


@pytest.fixture
def served(artifacts):
    """Start a server on a free port: ``served(max_queue=..., max_bytes=...)`` -> (server, tritonclient)."""
    running = []

    def start(**options):
        server = Server(load(artifacts[ARTIFACT], throughput=True), ServeOptions(port=0, **options)).start()
        running.append(server)
        return server, httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))

    yield start
    for server in running:
        server.stop()


def image_input(paths, binary=True):
    data = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    tensor = httpclient.InferInput("IMAGE", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def ranked(result, name="PROBABILITIES"):
    """tritonclient's classification output as (index, label, score) rows."""
    rows = []
    for row in result.as_numpy(name):
        entries = [(entry.decode() if isinstance(entry, bytes) else entry).split(":", 2) for entry in row]
        rows.append([(int(index), label, float(score)) for score, index, label in entries])
    return rows


def test_tritonclient_answers_equal_predict(served, artifacts, test_images):
    server, client = served()
    name = artifacts[ARTIFACT].name
    with load(artifacts[ARTIFACT]) as classifier:
        expected = [[(p.index, p.label, p.score) for p in classifier.predict(path.read_bytes(), k=K)]
                    for path in test_images]
        every_class = [classifier.predict(path.read_bytes(), k=len(classifier.labels)) for path in test_images]
        tensors = np.stack([classifier.spec(path) for path in test_images])
    probabilities = np.zeros((len(test_images), 10), dtype=np.float32)
    for row, predictions in zip(probabilities, every_class):
        for p in predictions:
            row[p.index] = p.score

    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert {"binary_tensor_data", "classification"} <= set(client.get_server_metadata()["extensions"])
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 10]}]
    assert "calibrated probability" in metadata["parameters"]["classification"]
    assert client.get_model_metadata(f"{name}-tensor")["inputs"][0]["shape"] == [-1, *tensors.shape[1:]]

    top = client.infer(name, [image_input(test_images)],
                       outputs=[httpclient.InferRequestedOutput("PROBABILITIES", class_count=K)])
    for got, want in zip(ranked(top), expected, strict=True):
        assert [(i, label) for i, label, _ in got] == [(i, label) for i, label, _ in want]
        assert [s for _, _, s in got] == pytest.approx([s for _, _, s in want], abs=1e-6)
    dense = client.infer(name, [image_input(test_images)]).as_numpy("PROBABILITIES")
    assert dense.dtype == np.float32 and np.allclose(dense, probabilities, atol=1e-6)

    for binary in (True, False):  # the tensor model, through the binary extension and as JSON data
        tensor = httpclient.InferInput("INPUT", list(tensors.shape), "FP32")
        tensor.set_data_from_numpy(tensors, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("PROBABILITIES", binary_data=binary, class_count=K)]
        got = ranked(client.infer(f"{name}-tensor", [tensor], outputs=outputs))
        assert [[i for i, _, _ in row] for row in got] == [[i for i, _, _ in row] for row in expected]


def raw_post(server, path, body, headers=None):
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        connection.close()


def test_protocol_errors_are_its_error_json(served, artifacts, test_images):
    server, client = served()
    name = artifacts[ARTIFACT].name
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    bad = [("image 1 of the request", image_input([test_images[0], test_images[0]]), None)]
    broken = np.array([test_images[0].read_bytes(), b"\x89PNG\r\n\x1a\n not a png"], dtype=np.object_)
    bad[0][1].set_data_from_numpy(broken)
    wrong_name = httpclient.InferInput("PIXELS", [1], "BYTES")
    wrong_name.set_data_from_numpy(broken[:1])
    bad.append(("takes input 'IMAGE'", wrong_name, None))
    bad.append(("the only output is 'PROBABILITIES'", image_input(test_images[:1]),
                [httpclient.InferRequestedOutput("LOGITS")]))
    for message, tensor, outputs in bad:
        with pytest.raises(InferenceServerException, match=message):
            client.infer(name, [tensor], outputs=outputs)
    status, body, _ = raw_post(server, f"/v2/models/{name}-tensor/infer",
                               json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 3],
                                                       "data": [1, 2, 3]}]}))
    assert status == 400 and list(body) == ["error"] and "must have shape [N, 3, 32, 32]" in body["error"]
    assert raw_post(server, f"/v2/models/{name}/infer", b"{not json")[:2] == (400, {
        "error": "the inference request is not valid JSON (Expecting property name enclosed in double quotes: "
                 "line 1 column 2 (char 1)); binary tensors need Inference-Header-Content-Length"})


def test_queue_and_upload_limits_hold(served, artifacts, test_images):
    server, client = served(max_queue=1, max_bytes=20_000)
    name = artifacts[ARTIFACT].name
    with pytest.raises(InferenceServerException, match="over the limit of 20000 bytes"):
        client.infer(name, [image_input(test_images * 40)])
    host, port = server.url.removeprefix("http://").split(":")
    holder = socket.create_connection((host, int(port)), timeout=30)  # announces an upload, sends 4 bytes of it
    holder.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                   b"\x89PNG")
    deadline = time.monotonic() + 30
    while server.service.queued != 1:
        assert time.monotonic() < deadline, "the slow upload was not admitted"
        time.sleep(0.02)
    started = time.perf_counter()
    status, body, retry_after = raw_post(server, f"/v2/models/{name}/infer", json.dumps({"inputs": []}))
    assert (status, retry_after) == (503, "1") and "busy" in body["error"]
    assert time.perf_counter() - started < 5  # refused at once, not queued
    with pytest.raises(InferenceServerException, match="busy"):
        client.infer(name, [image_input(test_images[:1])])
    holder.close()
