"""App-level figures on real artifacts, real image files and real subprocesses (values are
checked for sense, never against timing thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_cls.data import image_files
from edge_cls.measure.app import AppBenchResult, Spread, bench_app, cold_start, end_to_end
from edge_cls.measure.tables import app_table
from edge_cls.runtimes import load


def test_spread():
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.median, spread.low, spread.high) == (2.0, 1.0, 3.0) and str(spread) == "2 (1-3)"


def test_cold_start_in_a_fresh_process(artifacts, test_images):
    ballast = np.ones(300 * 2**20, np.uint8)  # a 300 MB parent: its memory is not the child's peak
    start, first, peak = cold_start(artifacts["onnx-int8"], test_images[0], rounds=2)
    del ballast
    assert start.median > first.median > 0  # the process also starts Python and imports the runtime
    assert peak is not None and 20 < peak.median < 250, peak  # an interpreter with numpy and a runtime


def test_end_to_end_uses_the_preprocess_hook(artifacts, test_images):
    calls = []
    with load(artifacts["openvino-fp32"]) as classifier:
        spec = classifier.spec

        def counting(image) -> np.ndarray:
            calls.append(image)
            return spec(image)

        figures = end_to_end(classifier, test_images, batch=4, workers=2, rounds=2, preprocess=counting)
        assert classifier.preprocess is spec  # restored
    assert figures["images"] == len(test_images) and figures["file_p50_ms"] > 0
    for name in ("loop", "batched", "pipelined", "compute"):
        assert figures[f"{name}_ips"].low > 0
    assert figures["pipelined_speedup"].median > 0 and figures["rounds"] == 2
    assert len(calls) >= 2 * 3 * len(test_images)  # loop, batched and pipelined, in each round, went through it


@pytest.mark.slow
def test_bench_app_row_and_table(artifacts, digits_root):
    images = image_files(digits_root / "test", limit=16)
    row = bench_app(artifacts["openvino-int8"], images=images, rounds=2, iterations=20)
    assert isinstance(row, AppBenchResult) and row.images == 16 and row.peak_rss_mb.median > 0
    assert row.benchmark_app["median_ms"].low > 0 and row.benchmark_app["edge_cls_p50_ms"].low > 0
    assert row.power is None  # no tegrastats here
    text = app_table([row])
    assert "start->answer ms" in text and "benchmark_app median ms" in text
    assert app_table([row], markdown=True).startswith("| model |")
    json.dumps(row.to_dict())  # serialisable as the CLI prints it


@pytest.mark.slow
def test_bench_cli_with_images_cold_start_and_benchmark_app(artifacts, digits_root):
    result = subprocess.run(
        [sys.executable, "-m", "edge_cls.cli", "bench", str(artifacts["openvino-fp32"]), str(artifacts["onnx-fp32"]),
         "--images", str(digits_root / "test" / "3"), "--rounds", "1", "--bench-iterations", "10", "-j", "2",
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["backend"] for r in report["app"]] == ["openvino", "onnxruntime"]
    for row in report["app"]:
        assert row["cold_start_ms"]["median"] > 0 and row["peak_rss_mb"]["median"] > 0
        assert row["images"] == 6 and row["pipelined_ips"]["median"] > 0 and row["workers"] == 2
    assert report["app"][0]["benchmark_app"]["inference_precision"] == "float32"
    assert report["app"][1]["benchmark_app"] is None  # ONNX Runtime has no such tool
