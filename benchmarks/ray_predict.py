"""Scoring a folder of photos: `edge-cls predict --jsonl -j 2` on one process against Ray Data with 1
and 2 inference actors on a local 2-CPU Ray cluster, interleaved rounds on the same images.

The model is a 224-px mobilenetv3_large_100 with random timm weights (speed only), exported to ONNX
Runtime FP32; the images are photo-like 640x480 JPEG files. Ray rows include starting the actors
and loading the artifact in each (the cluster itself is started once, and its start-up time is
reported on its own). Every run writes all records (JSON lines to /dev/null, Parquet to a scratch
directory).

    flock /tmp/edge-cls-bench.lock python benchmarks/ray_predict.py [--images 1000] [--rounds 2]

Writes benchmarks/results/ray_predict.{md,json}; the artifact and images are kept in build/ray_predict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_cls.measure.machine import machine_description

RESULTS = Path(__file__).parent / "results"
WORK = Path("build/ray_predict")
MODEL, SIZE = "mobilenetv3_large_100", 224
CONFIGS = {  # name -> ray options (None: edge-cls predict on one process)
    "predict --jsonl -j 2 (one process)": None,
    "Ray Data, 1 actor (1 CPU) + decode tasks (0.5 CPU)": {"actors": 1, "actor_cpus": 1.0, "decode_cpus": 0.5},
    "Ray Data, 2 actors (0.75 CPU each) + decode tasks (0.25 CPU)": {"actors": 2, "actor_cpus": 0.75,
                                                                   "decode_cpus": 0.25},
}


def build_artifact(images: list[Path]) -> Path:
    out = WORK / "artifacts"
    if (out / "onnx-fp32" / "manifest.json").is_file():
        return out / "onnx-fp32"
    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    model = create_model(ModelRecipe(name=MODEL, num_classes=1000)).eval()
    spec = spec_for_model(model, input_size=SIZE)
    batch = np.stack([spec(p) for p in images[:16]])
    [artifact] = export_artifacts(model, spec, [f"class {i}" for i in range(1000)], out,
                                  resolve_targets(["onnx"], ["fp32"]), reference=ReferenceSet.from_model(model, batch),
                                  model_name=MODEL)
    return artifact.path


def run_local(artifact: Path, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_cls.cli", "predict", str(artifact), str(folder), "--jsonl", "-j", "2"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "EDGE_CLS_PROGRESS": "off"})
    return time.perf_counter() - started


def run_ray(artifact: Path, folder: Path, options: dict) -> float:
    from edge_cls.scale.ray_data import predict_to_parquet

    out = WORK / "parquet"
    started = time.perf_counter()
    rows, failed = predict_to_parquet(artifact, [folder], out, k=5, batch_size=16, **options)
    seconds = time.perf_counter() - started
    assert failed == 0 and rows == len(list(folder.glob("*.jpg"))), (rows, failed)
    shutil.rmtree(out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import ray
    from runtime import write_images

    images = write_images(WORK / "images", args.images)
    folder = images[0].parent
    artifact = build_artifact(images)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - started
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, options in CONFIGS.items():
            seconds[name].append(run_local(artifact, folder) if options is None else run_ray(artifact, folder, options))
            print(f"{name}: {args.images / seconds[name][-1]:.1f} img/s", file=sys.stderr, flush=True)
    ray.shutdown()
    write(args, seconds, ray_start)


def write(args: argparse.Namespace, seconds: dict[str, list[float]], ray_start: float) -> None:
    local = args.images / float(np.median(seconds[next(iter(CONFIGS))]))
    command = "python benchmarks/ray_predict.py " + " ".join(sys.argv[1:])
    lines = ["# Scoring a folder: one process against Ray Data", "",
             f"Machine: {machine_description()}. Command: `{command.strip()}`.",
             f"{args.images} photo-like 640x480 JPEG files, {MODEL} at {SIZE} px (random weights, ONNX Runtime FP32), "
             f"top-5 records for every image; {args.rounds} interleaved rounds, median (min-max). Ray: a local cluster "
             f"of 2 CPUs (started once, {ray_start:.1f} s, not counted); each Ray run includes starting its actors "
             "and loading the artifact in each.", "",
             "| how | images/s | x one process |", "|---|---|---|"]
    rows = {}
    for name, values in seconds.items():
        rates = [args.images / s for s in values]
        rows[name] = {"seconds": values, "images_per_s": rates}
        lines.append(f"| {name} | {np.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                     f"{np.median(rates) / local:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_predict.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "ray_predict.json").write_text(json.dumps(
        {"machine": machine_description(), "command": command.strip(), "images": args.images, "rounds": args.rounds,
         "ray_start_s": ray_start, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
