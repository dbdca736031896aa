"""One classifier shared by many threads gives every thread exactly its single-thread answer, on
every backend (the documented guarantee), and close() is safe and final."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edge_cls.errors import EdgeClsError
from edge_cls.runtimes import ClassifierClosedError, load

THREADS, CALLS = 8, 200
ARTIFACTS = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tensorrt-fp16"]


@pytest.fixture
def artifact_path(request, artifacts):
    name = request.param
    return request.getfixturevalue("tensorrt_artifact") if name.startswith("tensorrt") else artifacts[name]


def distinct_inputs(classifier, test_images, count=16) -> np.ndarray:
    """Real digits and noise images: every input gives different logits, so a swapped answer shows."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(count - len(test_images))]
    return np.stack([classifier.spec(image) for image in [*test_images, *noise]])


@pytest.mark.parametrize("artifact_path", ARTIFACTS, indirect=True)
def test_threads_get_exactly_the_single_thread_logits(artifact_path, test_images):
    with load(artifact_path) as classifier:
        inputs = distinct_inputs(classifier, test_images)
        reference = [classifier.logits(inputs[i : i + 1]) for i in range(len(inputs))]
        assert len({r.tobytes() for r in reference}) == len(inputs)
        expected_top = [[p.index for p in classifier.predict(path, k=3)] for path in test_images]
        start = threading.Barrier(THREADS)
        wrong: list[tuple[int, int]] = []

        def work(thread: int) -> None:
            start.wait()
            for call in range(CALLS):
                i = (thread * 5 + call) % len(inputs)
                if call % 10 == 9:  # the whole path too: read, preprocess, run, top-k
                    j = i % len(test_images)
                    if [p.index for p in classifier.predict(test_images[j], k=3)] != expected_top[j]:
                        wrong.append((thread, call))
                elif not np.array_equal(classifier.logits(inputs[i : i + 1]), reference[i]):
                    wrong.append((thread, call))

        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(work, t) for t in range(THREADS)]:
                future.result()  # any exception in a thread fails the test here
        assert wrong == [], f"{len(wrong)} of {THREADS * CALLS} calls got another answer than single-threaded"


@pytest.mark.parametrize("artifact_path", ["onnx-fp32", "openvino-int8"], indirect=True)
def test_close_is_idempotent_and_later_calls_say_closed(artifact_path, test_images):
    classifier = load(artifact_path)
    batch = classifier.spec(test_images[0])[None]
    classifier.logits(batch)
    classifier.close()
    classifier.close()
    for call in (lambda: classifier.predict(test_images[0]), lambda: classifier.logits(batch),
                 lambda: classifier.predict_batch(test_images), lambda: classifier.predict_stream(test_images),
                 lambda: classifier.precision):
        with pytest.raises(ClassifierClosedError, match="is closed"):
            call()
    assert isinstance(ClassifierClosedError("x"), EdgeClsError) and "closed" in repr(classifier)


@pytest.mark.parametrize("artifact_path", ["openvino-fp32"], indirect=True)
def test_close_waits_for_calls_in_flight(artifact_path, test_images):
    classifier = load(artifact_path)
    batch = np.stack([classifier.spec(p) for p in test_images] * 64)  # long enough to close mid-call
    started, outcome = threading.Event(), {}

    def call() -> None:
        started.set()
        outcome["logits"] = classifier.logits(batch, chunk=8)

    thread = threading.Thread(target=call)
    thread.start()
    started.wait()
    classifier.close()  # must not pull the backend from under the call
    thread.join()
    assert outcome["logits"].shape == (len(batch), 10)
    with pytest.raises(ClassifierClosedError):
        classifier.logits(batch[:1])
