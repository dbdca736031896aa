"""OpenVINO's benchmark_app: its report parsed from recorded output, and a real run on an IR."""

from __future__ import annotations

import pytest

from edge_cls.artifact.manifest import load_manifest
from edge_cls.runtimes.openvino_tool import BenchmarkAppError, parse_benchmark_app, run_benchmark_app

RECORDED = """\
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'bfloat16'>
[Step 10/11] Measuring performance (Start inference synchronously, limits: 50 iterations)
[ INFO ] First inference took 11.80 ms
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            50 iterations
[ INFO ] Duration:         19.46 ms
[ INFO ] Latency:
[ INFO ]    Median:        115.52 us
[ INFO ]    Average:       361.33 us
[ INFO ]    Min:           106.12 us
[ INFO ]    Max:           4938.23 us
[ INFO ] Throughput:   2569.89 FPS
"""


def test_parse_recorded_report():
    figures = parse_benchmark_app(RECORDED)
    assert figures["median_ms"] == pytest.approx(0.11552) and figures["max_ms"] == pytest.approx(4.93823)
    assert figures["duration_ms"] == 19.46 and figures["iterations"] == 50 and figures["throughput_fps"] == 2569.89
    assert figures["inference_precision"] == "bfloat16"
    in_ms = parse_benchmark_app(RECORDED.replace("115.52 us", "1.50 ms"))
    assert in_ms["median_ms"] == 1.5


def test_output_without_a_report_is_an_error():
    with pytest.raises(BenchmarkAppError, match="no latency report"):
        parse_benchmark_app("[ ERROR ] Check 'false' failed")


def test_real_run_on_an_artifact(artifacts):
    path = artifacts["openvino-fp32"]
    manifest = load_manifest(path)
    figures = run_benchmark_app(path / manifest.model_file, manifest.input_name, manifest.spec.input_shape,
                                inference_precision="f32", iterations=30)
    assert figures["median_ms"] > 0 and figures["throughput_fps"] > 0 and figures["iterations"] >= 30
    assert figures["inference_precision"] == "float32" and "-infer_precision f32" in figures["command"]
    with pytest.raises(BenchmarkAppError, match="failed"):
        run_benchmark_app(path / "missing.xml", manifest.input_name, manifest.spec.input_shape, iterations=5)
