"""Latency, throughput, size and accuracy of artifacts, measured through the public runtime API.

No torch here: the same code benchmarks an artifact on a device that has only one runtime.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_cls.errors import ConfigError


@dataclass
class BenchResult:
    """One row of a benchmark table."""

    name: str
    backend: str
    precision: str
    runtime_precision: str
    size_bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_ips: float  # images per second at ``throughput_batch``
    throughput_batch: int
    top1: float | None = None
    top1_agreement: float | None = None
    images: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def time_calls(
    fn: Callable[[], object], *, warmup: int = 10, iterations: int = 100, max_seconds: float = 20.0
) -> np.ndarray:
    """Milliseconds per call of ``fn`` after ``warmup`` calls; stops early after ``max_seconds``."""
    if warmup < 0 or iterations < 1:
        raise ConfigError("warmup must be >= 0 and iterations >= 1")
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline and len(times) >= 10:
            break
    return np.asarray(times)


def latency_and_throughput(
    run: Callable[[np.ndarray], object], sample: np.ndarray, *, batch: int = 8, warmup: int = 10, iterations: int = 100
) -> tuple[np.ndarray, float]:
    """Batch-1 latencies (ms) and images/s at ``batch``, for any ``run(batch) -> logits``."""
    one = np.ascontiguousarray(sample[:1])
    latencies = time_calls(lambda: run(one), warmup=warmup, iterations=iterations)
    many = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
    batch_times = time_calls(lambda: run(many), warmup=max(2, warmup // 4), iterations=max(10, iterations // 4))
    return latencies, batch * 1e3 / float(np.median(batch_times))


def measure(
    run: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    reference_logits: np.ndarray | None = None,
    batch: int = 8,
    warmup: int = 10,
    iterations: int = 100,
    **identity: object,
) -> BenchResult:
    """One benchmark row for any ``run(batch) -> logits``: latency, throughput and, with
    ``targets``, top-1 (and agreement with ``reference_logits``). ``identity`` holds the row's
    name, backend, precision, runtime_precision and size_bytes."""
    latencies, throughput = latency_and_throughput(run, inputs, batch=batch, warmup=warmup, iterations=iterations)
    top1 = agreement = None
    if targets is not None:
        predicted = run(inputs).argmax(1)
        top1 = float((predicted == targets).mean())
        if reference_logits is not None:
            agreement = float((predicted == reference_logits.argmax(1)).mean())
    return BenchResult(
        **identity,
        p50_ms=float(np.percentile(latencies, 50)),
        p90_ms=float(np.percentile(latencies, 90)),
        p99_ms=float(np.percentile(latencies, 99)),
        throughput_ips=throughput,
        throughput_batch=batch,
        top1=top1,
        top1_agreement=agreement,
        images=0 if targets is None else int(len(targets)),
    )


def directory_size(path: str | os.PathLike[str]) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")


def streamed_accuracy(
    run: Callable[[np.ndarray], np.ndarray], batches: Iterable[tuple[np.ndarray, np.ndarray]],
    reference_logits: np.ndarray | None = None,
) -> tuple[float, float | None, int, np.ndarray]:
    """Top-1 (and agreement with ``reference_logits``) over (inputs, targets) batches read one at a
    time, so a split of any size costs one batch of memory. Returns (top1, agreement, images, first inputs)."""
    correct = agree = seen = 0
    first: np.ndarray | None = None
    for inputs, targets in batches:
        first = inputs if first is None else first
        predicted = run(inputs).argmax(1)
        correct += int((predicted == targets).sum())
        if reference_logits is not None:
            agree += int((predicted == reference_logits[seen : seen + len(predicted)].argmax(1)).sum())
        seen += len(predicted)
    if first is None:
        raise ConfigError("no images to measure accuracy on")
    return correct / seen, (agree / seen if reference_logits is not None else None), seen, first


def bench_artifact(
    path: str | os.PathLike[str],
    *,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    batches: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    reference_logits: np.ndarray | None = None,
    batch: int = 8,
    warmup: int = 10,
    iterations: int = 100,
    name: str | None = None,
    **options: object,
) -> BenchResult:
    """Benchmark one artifact directory.

    ``data`` is a preprocessed (batch, targets) pair for accuracy; ``batches`` the same as an
    iterable of pairs, read one at a time (:func:`edge_cls.data.iter_split_batches`). Without
    either a random input in the spec's shape is timed and accuracy is left empty.
    """
    from edge_cls.runtimes import load

    with load(path, **options) as classifier:
        identity = dict(name=name or Path(path).name, backend=classifier.backend.name,
                        precision=classifier.manifest.precision, runtime_precision=classifier.precision,
                        size_bytes=directory_size(path))
        if batches is not None:
            top1, agreement, images, sample = streamed_accuracy(classifier.logits, batches, reference_logits)
            row = measure(classifier.logits, sample, batch=batch, warmup=warmup, iterations=iterations, **identity)
            return replace(row, top1=top1, top1_agreement=agreement, images=images)
        if data is not None:
            inputs, targets = data
        else:
            inputs = classifier.sample_input(batch)
            targets = None
        return measure(
            classifier.logits, inputs, targets=targets, reference_logits=reference_logits, batch=batch,
            warmup=warmup, iterations=iterations, **identity,
        )
