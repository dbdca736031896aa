"""What the OpenVINO wrapper costs per call: edge-cls's ``Classifier.logits`` against the raw
``InferRequest.infer`` on the same compiled model, batch 1, interleaved rounds in one process.

Uses the INT8 artifacts that ``benchmarks/runtime.py`` builds (run it first):

    python benchmarks/wrapper_overhead.py [--rounds 30] [--calls 20]

Writes benchmarks/results/wrapper_overhead.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_cls.measure.machine import machine_description
from edge_cls.runtimes import load

WORK = Path("build/runtime_bench")
ARTIFACTS = ["mobilenetv3_small_100-64/openvino-int8", "mobilenetv3_large_100-224/openvino-int8"]
RESULTS = Path(__file__).parent / "results"


def measure(path: Path, rounds: int, calls: int) -> dict[str, float]:
    with load(path) as clf:
        x = np.random.default_rng(0).random((1, *clf.manifest.spec.input_shape), dtype=np.float32)
        compiled = clf.backend._compiled  # the same compiled model the wrapper runs
        request, output = compiled.create_infer_request(), compiled.output(0)
        paths = {
            "edge-cls logits": lambda: clf.logits(x),
            "raw infer (copies in and out)": lambda: np.array(request.infer({0: x})[output], copy=True),
            "raw infer, shared in and out, one copy": lambda: np.array(
                request.infer({0: x}, share_inputs=True, share_outputs=True)[output], copy=True),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, run in paths.items():
                start = time.perf_counter()
                for _ in range(calls):
                    run()
                times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    lines = ["# OpenVINO wrapper overhead, batch 1", "", f"Machine: {machine_description()}.", "",
             f"Command: `python benchmarks/wrapper_overhead.py {' '.join(sys.argv[1:])}`. Median ms per call over "
             f"{args.rounds} interleaved rounds of {args.calls} calls; ratio to the raw shared call.", "",
             "| artifact | path | ms per call | x raw shared |", "|---|---|---|---|"]
    for artifact in ARTIFACTS:
        figures = measure(WORK / artifact, args.rounds, args.calls)
        base = figures["raw infer, shared in and out, one copy"]
        lines += [f"| {artifact} | {name} | {ms:.3f} | {ms / base:.2f} |" for name, ms in figures.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wrapper_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
