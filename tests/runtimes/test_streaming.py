"""The pipelined path: input order, per-image errors, bounded memory on endless input, clean
threads, and backend failures that propagate instead of hiding as image errors."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ConfigError, InvalidImageError
from edge_cls.runtimes import load


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("edge-cls")]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@pytest.fixture(params=["onnx-fp32", "openvino-int8"])
def classifier(request, artifacts):
    with load(artifacts[request.param]) as clf:
        yield clf


class RaisingPath(os.PathLike):
    """A path object that fails in an unplanned way (not an EdgeClsError) when read."""

    def __fspath__(self) -> str:
        raise RuntimeError("the network share went away")


def test_stream_keeps_input_order_and_matches_predict(classifier, test_images):
    images = [*test_images, *(np.asarray(Image.open(p).convert("RGB")) for p in test_images)] * 3
    expected = [[(p.index, p.score) for p in preds] for preds in classifier.predict(images, k=3)]
    with classifier.predict_stream(iter(images), k=3, batch_size=3, workers=2) as stream:
        results = list(stream)
    assert [r.ok for r in results] == [True] * len(images)
    assert [[(p.index, p.score) for p in r.predictions] for r in results] == expected
    assert [r.source for r in results[: len(test_images)]] == [str(p) for p in test_images]
    assert pipeline_threads() == []


def test_every_unreadable_image_is_its_own_error(classifier, test_images, tmp_path):
    truncated = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    Image.open(test_images[0]).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[:60])
    bad = [truncated, tmp_path / "missing.jpg", b"not an image", np.zeros((8, 8, 3), np.float64), RaisingPath(),
           tmp_path]
    images = [test_images[0], *bad, test_images[1]]
    for results in (classifier.predict_batch(images, k=2, batch_size=3),
                    classifier.predict_batch(images, k=2, batch_size=3, workers=2)):
        assert [r.ok for r in results] == [True, *[False] * len(bad), True]
        assert all(isinstance(r.error, InvalidImageError) for r in results[1:-1])
        assert "truncated.png" in str(results[1].error) and "missing.jpg" in str(results[2].error)
        assert "RuntimeError: the network share went away" in str(results[5].error)
        assert isinstance(results[5].error.__cause__, RuntimeError)
        assert results[-1].predictions == classifier.predict(test_images[1], k=2)


@pytest.mark.slow
def test_endless_input_keeps_memory_flat_and_threads_end_on_break(classifier):
    pulled = itertools.count()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(4)]

    def camera():  # an endless source of new 196 kB frames
        while True:
            next(pulled)
            yield frames[np.random.randint(4)].copy()

    rss_at = {}
    for consumed, result in enumerate(classifier.predict_stream(camera(), k=1, batch_size=8, workers=2), start=1):
        assert result.ok
        if consumed in (300, 3000):
            rss_at[consumed] = rss_mb()
        if consumed == 3000:
            in_flight = next(pulled) - consumed - 1
            break
    assert pipeline_threads() == []  # leaving the loop closed the stream and joined its threads
    assert in_flight <= (2 + 1 + 1 + 1) * 8  # the prefetched batches and no more: 3000 frames are 590 MB
    assert rss_at[3000] - rss_at[300] < 40, rss_at


def test_closing_the_stream_early_joins_threads(classifier, test_images):
    stream = classifier.predict_stream(itertools.cycle(test_images), k=1, batch_size=2, workers=2)
    with stream:
        assert next(stream).ok and pipeline_threads()
    assert pipeline_threads() == []
    with pytest.raises(StopIteration):
        next(stream)


def test_backend_failure_propagates_and_stops_the_stream(classifier, test_images):
    stream = classifier.predict_stream(itertools.cycle(test_images), k=1, batch_size=2, workers=2)
    assert next(stream).ok
    classifier.backend.close()  # the backend breaks under the classifier: not an image's fault
    with pytest.raises(Exception) as raised:
        for _ in range(100):
            assert next(stream).ok
    assert not isinstance(raised.value, InvalidImageError)
    assert pipeline_threads() == []


def test_a_preprocess_that_breaks_its_contract_raises(classifier, test_images):
    classifier.preprocess = lambda image: np.zeros((3, 7, 7), np.float32)  # wrong shape for the model
    with pytest.raises(ConfigError, match="float32 batch"):
        list(classifier.predict_stream(test_images, k=1, workers=2))
    assert pipeline_threads() == []


def test_pipeline_submit_and_bounds(classifier, test_images):
    with classifier.pipeline(workers=2, max_pending=2) as pipeline:
        futures = [pipeline.submit(test_images[:3], k=2) for _ in range(4)]  # blocks for free places
        results = [f.result(timeout=60) for f in futures]
    assert all([r.ok for r in batch] == [True] * 3 for batch in results)
    assert results[0][0].predictions == classifier.predict(test_images[0], k=2)
    with pytest.raises(ConfigError):
        classifier.predict_stream(test_images, k=0)


@pytest.mark.slow
def test_predict_on_a_long_list_keeps_peak_memory_bounded(artifacts, tmp_path):
    """predict(list) reads its list in batches: peak RSS must not grow with the list (3000 images
    would stack to 74 MB of tensors at once)."""
    rng = np.random.default_rng(0)
    for i in range(3000):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i:04d}.png")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from edge_cls.runtimes import load

        def peak_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

        paths = sorted(Path({str(tmp_path)!r}).glob("*.png"))
        clf = load({str(artifacts["onnx-fp32"])!r})
        clf.predict(paths[:64], k=5)
        before = peak_mb()
        results = clf.predict(paths, k=5)
        assert len(results) == 3000 and all(len(r) == 5 for r in results)
        print(peak_mb() - before)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 25, f"peak RSS grew by {float(result.stdout):.1f} MB"
