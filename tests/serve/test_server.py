"""`edge-cls serve` as a client sees it: a real subprocess on 127.0.0.1, real HTTP requests."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ConfigError
from edge_cls.runtimes import load
from edge_cls.serve import ServeOptions

MAX_UPLOAD_MB = 0.05  # 52,428 bytes


class Service:
    """An `edge-cls serve` subprocess and a way to talk to it."""

    def __init__(self, artifact: Path, *extra: str) -> None:
        command = [sys.executable, "-m", "edge_cls.cli", "serve", str(artifact), "--port", "0",
                   "--max-upload-mb", str(MAX_UPLOAD_MB), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._first_line(timeout=120)
        match = re.search(r"http://([\d.]+):(\d+)", line)
        assert match, f"no URL in {line!r}; stderr: {self.process.stderr.read() if self.process.poll() else ''}"
        self.host, self.port = match.group(1), int(match.group(2))

    def _first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                return self.process.stdout.readline()
        return ""

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def queued(self) -> int:
        return self.request("GET", "/health")[1]["queued"]

    def wait_for_stderr(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stderr], [], [], 0.5)
            if ready and text in self.process.stderr.readline():
                return
        raise AssertionError(f"the server did not print {text!r} within {timeout} s")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return self.process.returncode, err


@pytest.fixture
def service(artifacts):
    started = Service(artifacts["openvino-int8"], "--max-queue", "8")
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_answers_equal_predict_under_concurrent_requests(service, artifacts, test_images):
    with load(artifacts["openvino-int8"]) as classifier:
        expected = {p: [x.to_dict() for x in classifier.predict(p.read_bytes(), k=3)] for p in test_images}
    assert service.request("GET", "/health") == (200, {"status": "ok", "queued": 0})
    status, info = service.request("GET", "/info")
    assert status == 200 and info["backend"] == "openvino" and len(info["labels"]) == 10
    assert info["max_upload_bytes"] == int(MAX_UPLOAD_MB * 2**20)

    def ask(path: Path):
        return path, service.request("POST", "/predict?k=3", path.read_bytes(), "image/png")

    with ThreadPoolExecutor(8) as pool:  # as many clients as --max-queue: every one is admitted
        answers = list(pool.map(ask, test_images * 4))
    assert [status for _, (status, _) in answers] == [200] * len(answers)
    for path, (_, body) in answers:
        for got, want in zip(body["predictions"], expected[path], strict=True):
            assert got["index"] == want["index"] and got["score"] == pytest.approx(want["score"], abs=1e-6)
    body, content_type = multipart("digit.png", test_images[0].read_bytes())
    status, answer = service.request("POST", "/predict?k=3", body, content_type)
    indices = [p["index"] for p in answer["predictions"]]
    assert status == 200 and indices == [p["index"] for p in expected[test_images[0]]]
    assert service.stop()[0] == 0


@pytest.mark.parametrize("body, content_type, status, message", [
    (os.urandom(60_000), "image/jpeg", 413, "over the limit of 52428 bytes"),
    (b"\x89PNG\r\n\x1a\n this is no png", "image/png", 400, "not an image format"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "application/octet-stream", 400, "image bytes"),
    (b'{"image": "cat.jpg"}', "application/json", 415, "is not an image"),
    (b"", "image/png", 400, "empty upload"),
])
def test_bad_uploads_get_a_4xx_and_one_line_of_json(service, body, content_type, status, message):
    got_status, got = service.request("POST", "/predict", body, content_type)
    assert got_status == status and message in got["error"] and "\n" not in got["error"], got
    assert "Traceback" not in got["error"]
    assert service.request("GET", "/health")[0] == 200  # and the service is still up
    assert service.request("GET", "/nowhere")[0] == 404
    assert service.request("POST", "/predict?k=0", b"x", "image/png")[0] == 400


def slow_upload(service: Service, length: int = 1000, first: bytes = b"\x89PNG") -> socket.socket:
    """A client that announces an upload and sends only its first bytes: it holds one place."""
    client = socket.create_connection((service.host, service.port), timeout=30)
    client.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}"
                   "\r\n\r\n".encode() + first)
    return client


def read_response(client: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds, or fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout} s: {condition.__doc__ or condition}"
        time.sleep(0.02)


def test_full_queue_gets_503_at_once(artifacts, test_images):
    service = Service(artifacts["onnx-fp32"], "--max-queue", "1")
    try:
        holder = slow_upload(service)
        wait_until(lambda: service.queued() == 1)  # the server admitted it
        status, body = service.request("POST", "/predict", test_images[0].read_bytes(), "image/png")
        assert status == 503 and "busy" in body["error"]
        holder.close()  # the incomplete upload is answered 400 and frees its place
        wait_until(lambda: service.queued() == 0)
        assert service.request("POST", "/predict", test_images[0].read_bytes(), "image/png")[0] == 200
    finally:
        assert service.stop()[0] == 0


def test_sigterm_finishes_the_request_in_flight_then_exits_0(artifacts, test_images):
    service = Service(artifacts["openvino-fp32"])
    image = test_images[0].read_bytes()
    client = slow_upload(service, len(image), image[:10])
    wait_until(lambda: service.queued() == 1)
    service.process.send_signal(signal.SIGTERM)  # arrives while the upload is half sent
    service.wait_for_stderr("stopping")
    client.sendall(image[10:])
    status, body = read_response(client)
    assert status == 200 and len(body["predictions"]) == 5
    code, err = service.stop()
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(OSError):
        socket.create_connection((service.host, service.port), timeout=2)


def test_serve_options_are_checked():
    with pytest.raises(ConfigError):
        ServeOptions(port=70000)
    with pytest.raises(ConfigError):
        ServeOptions(max_queue=0)


def test_a_port_in_use_is_one_line_error(artifacts):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "edge_cls.cli", "serve", str(artifacts["onnx-fp32"]),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"edge-cls: error: cannot listen on 127.0.0.1:{port}")


def test_any_real_image_gets_an_answer(service):
    noise = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    status, body = service.request("POST", "/predict?k=1", buffer.getvalue(), "image/png")
    assert status == 200 and len(body["predictions"]) == 1
