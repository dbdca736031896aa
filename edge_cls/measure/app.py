"""What an app feels: cold start, peak memory, file -> answer latency, and the pipelined path
against a plain loop on real image files.

Compute-only figures (:mod:`edge_cls.measure.latency`) time the backend on ready tensors; an app also
starts a process, imports a runtime, loads the model, and decodes every image. Compared figures
are measured in interleaved rounds (the machine is shared and noisy) and reported with their
spread. No torch: this runs on the device.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError, EdgeClsError

logger = logging.getLogger(__name__)

# Runs in a fresh interpreter: exactly what an app does to give its first answer, then a few more.
_COLD_START = """
import json, sys, time
from edge_cls.runtimes import load
imported = time.time()
path, image, backend = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
classifier = load(path, **({"backend": backend} if backend else {}))
loaded = time.perf_counter()
classifier.predict(image, k=5)
first = time.perf_counter()
answered = time.time()
for _ in range(20):
    classifier.predict(image, k=5)
peak_kb = None
try:  # VmHWM: this process's peak since exec (ru_maxrss would still count the parent it forked from)
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    try:
        import resource
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    except ImportError:
        pass
print(json.dumps({"imported": imported, "answered": answered, "load_ms": 1e3 * (loaded - start),
                  "first_answer_ms": 1e3 * (first - start), "peak_rss_kb": peak_kb}))
"""


@dataclass
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(float(np.median(values)), float(min(values)), float(max(values)))

    def __str__(self) -> str:
        return f"{self.median:.4g} ({self.low:.3g}-{self.high:.3g})"


@dataclass
class AppBenchResult:
    """One artifact as an app sees it; fields left None were not measured."""

    name: str
    backend: str
    runtime_precision: str
    cold_start_ms: Spread | None = None  # process start -> first answer (fresh interpreter)
    cold_first_answer_ms: Spread | None = None  # load() -> first answer, in that fresh process
    peak_rss_mb: Spread | None = None  # that process's peak resident memory after 21 answers
    warm_first_answer_ms: float | None = None  # load() -> first answer with the runtime already imported
    images: int = 0
    file_p50_ms: float | None = None  # one image file -> top-5, one at a time
    loop_ips: Spread | None = None  # predict(path) in a plain loop
    batched_ips: Spread | None = None  # predict_batch, batches of `batch`, no overlap
    pipelined_ips: Spread | None = None  # predict_stream with `workers` reading threads
    pipelined_speedup: Spread | None = None  # pipelined / loop, per round
    compute_ips: Spread | None = None  # the backend alone on ready tensors, batches of `batch`
    batch: int = 8
    workers: int = 0
    rounds: int = 0
    benchmark_app: dict[str, Any] | None = None  # OpenVINO's own tool on the same IR
    power: dict[str, Any] | None = None  # tegrastats summary on a Jetson
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cold_start(
    path: str | os.PathLike[str], image: str | os.PathLike[str], *, backend: str | None = None, rounds: int = 3,
    timeout: float = 300.0,
) -> tuple[Spread, Spread, Spread | None]:
    """Start a fresh Python ``rounds`` times; each imports the runtime, loads ``path`` and answers
    for ``image``. Returns (process start -> first answer ms, load -> first answer ms, peak RSS MB)."""
    starts, firsts, peaks = [], [], []
    for _ in range(rounds):
        launched = time.time()
        result = subprocess.run(
            [sys.executable, "-c", _COLD_START, str(path), str(image), backend or ""],
            capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeClsError(f"the cold-start process for {path} failed: {last}")
        child = json.loads(result.stdout.strip().splitlines()[-1])
        starts.append(1e3 * (child["answered"] - launched))
        firsts.append(child["first_answer_ms"])
        if child["peak_rss_kb"]:
            peaks.append(child["peak_rss_kb"] / 1024)
    return Spread.of(starts), Spread.of(firsts), Spread.of(peaks) if peaks else None


def warm_first_answer_ms(path: str | os.PathLike[str], image: str | os.PathLike[str], **options: Any) -> float:
    """load() -> first answer in this process, where the runtime library is already imported."""
    from edge_cls.runtimes import load

    start = time.perf_counter()
    with load(path, **options) as classifier:
        classifier.predict(image, k=5)
        return 1e3 * (time.perf_counter() - start)


def end_to_end(
    classifier: Any, paths: Sequence[Path], *, batch: int = 8, workers: int | None = None, rounds: int = 3,
    latency_images: int = 100, preprocess: Callable[[Any], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Image files -> top-5 answers, as a plain loop, in batches, and through the pipeline.

    ``preprocess`` replaces the classifier's image -> tensor function for the measurement (the hook
    for a faster decoding path). The three paths and compute-only run in ``rounds`` interleaved
    rounds, the order rotating each round.
    """
    from edge_cls.runtimes.streaming import default_workers

    if not paths:
        raise ConfigError("no image files to time: pass a folder with images")
    workers = default_workers() if workers is None else workers
    original = classifier.preprocess
    if preprocess is not None:
        classifier.preprocess = preprocess
    try:
        return _end_to_end(classifier, list(paths), batch, workers, rounds, latency_images)
    finally:
        classifier.preprocess = original


def _end_to_end(classifier: Any, paths: list[Path], batch: int, workers: int, rounds: int,
                latency_images: int) -> dict[str, Any]:
    classifier.predict(paths[: 2 * batch], k=5)  # warm-up: first inferences and page cache
    inputs = [classifier.preprocess(p) for p in paths[:64]]
    if all(i.shape == inputs[0].shape for i in inputs):
        sample = np.resize(np.stack(inputs), (batch, *inputs[0].shape))
    else:  # crops of every size for a graph that resizes: one size, a 640x480 frame's
        sample = classifier.sample_input(batch)
    compute_batches = [sample] * max(1, len(paths) // batch)

    def loop() -> None:
        for path in paths:
            classifier.predict(path, k=5)

    def batched() -> None:
        classifier.predict_batch(paths, k=5, batch_size=batch)

    def pipelined() -> None:
        with classifier.predict_stream(paths, k=5, batch_size=batch, workers=workers) as stream:
            for _ in stream:
                pass

    def compute() -> None:
        for tensors in compute_batches:
            classifier.logits(tensors)

    paths_timed = {"loop": (loop, len(paths)), "batched": (batched, len(paths)), "pipelined": (pipelined, len(paths)),
                   "compute": (compute, batch * len(compute_batches))}
    per_round: dict[str, list[float]] = {name: [] for name in paths_timed}
    names = list(paths_timed)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
            run, count = paths_timed[name]
            start = time.perf_counter()
            run()
            per_round[name].append(count / (time.perf_counter() - start))
    latencies = []
    for path in paths[:latency_images]:
        start = time.perf_counter()
        classifier.predict(path, k=5)
        latencies.append(1e3 * (time.perf_counter() - start))
    speedups = [p / q for p, q in zip(per_round["pipelined"], per_round["loop"])]
    return {
        "images": len(paths), "file_p50_ms": float(np.median(latencies)),
        **{f"{name}_ips": Spread.of(values) for name, values in per_round.items()},
        "pipelined_speedup": Spread.of(speedups), "batch": batch, "workers": workers, "rounds": rounds,
    }


def synthetic_image(folder: Path, size: tuple[int, int] = (640, 480)) -> Path:
    """A photo-sized JPEG for the cold-start answer when no image folder is given."""
    from PIL import Image

    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) * 255 // sum(size)], axis=-1)
    path = folder / "cold_start.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    return path


def bench_app(
    path: str | os.PathLike[str], *, images: Sequence[Path] | None = None, cold: bool = True, tool: bool = True,
    rounds: int = 3, batch: int = 8, workers: int | None = None, iterations: int = 100,
    preprocess: Callable[[Any], np.ndarray] | None = None, name: str | None = None, **options: Any,
) -> AppBenchResult:
    """Every app-level figure of one artifact (see the module doc); ``options`` go to ``load``."""
    import tempfile

    from edge_cls.measure.tegrastats import TegrastatsSampler
    from edge_cls.runtimes import load

    with tempfile.TemporaryDirectory() as tmp:
        image = images[0] if images else synthetic_image(Path(tmp))
        cold_figures = cold_start(path, image, backend=options.get("backend"), rounds=rounds) if cold else None
        warm = warm_first_answer_ms(path, image, **options)
    with load(path, **options) as classifier:
        row = AppBenchResult(name or Path(path).name, classifier.backend.name, classifier.precision,
                             warm_first_answer_ms=warm, batch=batch, rounds=rounds)
        if cold_figures:
            row.cold_start_ms, row.cold_first_answer_ms, row.peak_rss_mb = cold_figures
        if images:
            with TegrastatsSampler() as sampler:
                figures = end_to_end(classifier, images, batch=batch, workers=workers, rounds=rounds,
                                     preprocess=preprocess)
            for key, value in figures.items():
                setattr(row, key, value)
            row.power = sampler.summary()
        if tool:
            row.benchmark_app = _vendor_benchmark_row(classifier, Path(path), iterations, rounds)
    return row


def _vendor_benchmark_row(classifier: Any, path: Path, iterations: int, rounds: int) -> dict[str, Any] | None:
    """The backend vendor's own tool (OpenVINO's benchmark_app) and edge-cls's batch-1 latency on the same
    model, in interleaved rounds; None where the backend's vendor has no such tool."""
    from edge_cls.measure.latency import time_calls

    manifest = classifier.manifest
    one = classifier.sample_input(1)
    ours, theirs, fps = [], [], []
    try:
        for _ in range(rounds):
            ours.append(float(np.median(time_calls(lambda: classifier.logits(one), iterations=iterations))))
            figures = classifier.backend.vendor_benchmark(path / manifest.model_file, manifest, iterations=iterations)
            if figures is None:
                return None
            theirs.append(figures["median_ms"])
            fps.append(figures["throughput_fps"])
    except EdgeClsError as e:
        logger.warning("%s", e)
        return {"error": str(e)}
    return {**figures, "median_ms": Spread.of(theirs), "throughput_fps": Spread.of(fps),
            "edge_cls_p50_ms": Spread.of(ours), "edge_cls_precision": classifier.precision}
