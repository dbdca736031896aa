"""OpenVINO's own ``benchmark_app`` on an artifact's IR, for a side-by-side with edge-cls's figures.

``benchmark_app`` times the compiled model alone, in C++ loops, so the gap to edge-cls's batch-1
latency is what the Python API, the output copy and the classifier cost. It is run with the
same device and inference precision as the artifact, at batch 1, under ``-hint latency``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_cls.errors import EdgeClsError

_UNITS_MS = {"ms": 1.0, "us": 1e-3, "s": 1e3}
_PRECISION = re.compile(r"INFERENCE_PRECISION_HINT:\s*<Type: '(\w+)'>")
_FIELD = re.compile(r"^\[\s*INFO\s*\]\s+(Count|Duration|Median|Average|Min|Max|Throughput):\s+([\d.]+)\s*(\S+)", re.M)


class BenchmarkAppError(EdgeClsError, RuntimeError):
    """benchmark_app is missing, failed, or printed nothing we could read."""


def benchmark_app_command() -> list[str] | None:
    """How to start benchmark_app here: the installed script, or OpenVINO's module; None without OpenVINO."""
    beside = Path(sys.executable).with_name("benchmark_app")
    found = str(beside) if beside.is_file() else shutil.which("benchmark_app")
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    script = ("import sys; from openvino.tools.benchmark.main import main; "
              "sys.argv[0] = 'benchmark_app'; sys.exit(main())")
    return [sys.executable, "-c", script]


def parse_benchmark_app(text: str) -> dict[str, Any]:
    """Read the report benchmark_app prints: latencies in ms, throughput in FPS, the precision it ran."""
    figures: dict[str, Any] = {}
    for name, value, unit in _FIELD.findall(text):
        key = name.lower()
        if key == "count":
            figures["iterations"] = float(value)
        elif key == "throughput":
            figures["throughput_fps"] = float(value)
        elif unit in _UNITS_MS:
            figures[f"{key}_ms" if key != "duration" else "duration_ms"] = float(value) * _UNITS_MS[unit]
    precision = _PRECISION.search(text)
    if precision:
        figures["inference_precision"] = precision.group(1)
    if "median_ms" not in figures or "throughput_fps" not in figures:
        raise BenchmarkAppError("benchmark_app printed no latency report; run it by hand to see why")
    return figures


def run_benchmark_app(
    model_xml: str | Path, input_name: str, input_shape: tuple[int, ...], *, device: str = "CPU",
    inference_precision: str | None = None, iterations: int = 200, hint: str = "latency", timeout: float = 600.0,
) -> dict[str, Any]:
    """Run benchmark_app at batch 1 and return its figures with the command line used."""
    command = benchmark_app_command()
    if command is None:
        raise BenchmarkAppError("benchmark_app needs OpenVINO: pip install 'edge-cls[openvino]'")
    shape = ",".join(str(v) for v in (1, *input_shape))
    args = ["-m", str(model_xml), "-d", device, "-hint", hint, "-niter", str(iterations),
            "-data_shape", f"{input_name}[{shape}]"]
    if inference_precision:
        args += ["-infer_precision", inference_precision]
    try:
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchmarkAppError(f"benchmark_app ran over {timeout:.0f} s on {model_xml}") from e
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise BenchmarkAppError(f"benchmark_app failed on {model_xml}: {last}")
    return {**parse_benchmark_app(result.stdout + result.stderr),
            "command": "benchmark_app " + " ".join(args), "hint": hint}
