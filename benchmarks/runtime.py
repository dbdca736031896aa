"""What an app feels, per runtime: cold start, peak memory, file -> top-5, a plain loop against the
pipelined path on real JPEG files, and OpenVINO's benchmark_app on the same IR, side by side.

Two models with random timm weights (speed only, accuracy is not the point): the demo-size
student (mobilenetv3_small_100 at 64 px) and a 224-px model (mobilenetv3_large_100), each exported
to ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8 with edge_cls.export. The images are 500
photo-like 640x480 JPEG files written once. Compared paths run in interleaved rounds; tables
give the median and the min-max over rounds.

    python benchmarks/runtime.py [--models mobilenetv3_small_100:64 mobilenetv3_large_100:224]
        [--images 500] [--rounds 3] [--preprocess module:factory]

``--preprocess fast`` measures edge-cls's fast image path (``spec(image, fast=True)``),
``--preprocess module:factory`` any other image -> tensor path (``factory(spec)`` returns the
callable); compute-only figures are unchanged. ``--placements`` adds, per artifact, copies whose
model file takes uint8 pixels (edge_cls.preprocess.placement, built by the export's own in-graph
builders): ``graph-exact`` / ``graph-box`` / ``graph-fast`` (the graph normalises; the host resizes
exactly, by one box call, or after a reduced decode) and ``graph-resize`` (the graph resizes too).
Writes benchmarks/results/runtime.{md,json}; artifacts and images are kept in build/runtime_bench.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edge_cls.data import image_files
from edge_cls.measure.app import bench_app
from edge_cls.measure.latency import bench_artifact
from edge_cls.measure.machine import device_model, machine_description
from edge_cls.measure.tables import app_table, markdown_table

RESULTS = Path(__file__).parent / "results"
WORK = Path("build/runtime_bench")
DEFAULT_MODELS = ["mobilenetv3_small_100:64", "mobilenetv3_large_100:224"]
ARTIFACTS = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]


def _placements() -> dict:
    from edge_cls.preprocess.placement import Placement

    found = {f"graph-{resize}": (lambda fmt, resize=resize: Placement(graph_input="uint8", host_resize=resize))
             for resize in ("exact", "box", "fast")}
    found["graph-resize"] = lambda fmt: Placement(graph_input="uint8", graph_resize=fmt.graph_resize)
    return found


PLACEMENTS = _placements()


def photo_like(rng: np.random.Generator, width: int = 640, height: int = 480) -> np.ndarray:
    """Smooth colour fields, hard-edged discs and sensor noise: compresses and decodes like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([127 + 80 * np.sin(2 * np.pi * (rng.uniform(0.5, 4) * x / width + rng.uniform(0.5, 4) * y / height))
                      for _ in range(3)], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 120)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(photo_like(rng)).save(folder / f"{i:04d}.jpg", quality=90)
    return image_files(folder, limit=count)


def build_artifacts(name: str, size: int, images: list[Path]) -> dict[str, Path]:
    """Export the model once; later runs reuse build/runtime_bench/<name>-<size>."""
    out = WORK / f"{name}-{size}"
    if all((out / a / "manifest.json").is_file() for a in ARTIFACTS):
        return {a: out / a for a in ARTIFACTS}
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    model = create_model(ModelRecipe(name=name, num_classes=1000)).eval()
    spec = spec_for_model(model, input_size=size)
    batch = np.stack([spec(p) for p in images[:64]])
    exported = export_artifacts(
        model, spec, [f"class {i}" for i in range(1000)], out, resolve_targets(["onnx", "openvino"], ["fp32", "int8"]),
        reference=ReferenceSet.from_model(model, batch),
        calibration=CalibrationSet.from_folder(images[0].parent, spec, size=64), model_name=name,
        # random weights: INT8 is here for speed only, so its (meaningless) accuracy drop is accepted
        search=SearchSettings(accept_drop=True, only=("ort-qdq-u8s8", "ov-nncf-performance")),
    )
    return {a.target.name: a.path for a in exported}


def with_placement(artifact: Path, name: str) -> Path:
    """A copy of ``artifact`` whose model file takes uint8 pixels, made once (build/runtime_bench)."""
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.export.formats import FORMATS
    from edge_cls.export.preprocess_choice import rebuild_artifact

    out = artifact.parent / f"{artifact.name}-{name}"
    if not (out / "manifest.json").is_file():
        manifest = load_manifest(artifact)
        fmt = next(entry for entry in FORMATS.values() if entry.backend == manifest.backend)
        rebuild_artifact(artifact, out, manifest, fmt, PLACEMENTS[name](fmt))
    return out


def preprocess_factory(text: str | None):
    if not text:
        return None
    if text == "fast":  # edge_cls.preprocess's fast path: reduced JPEG decode, one resize to the crop
        return lambda spec: (lambda image: spec(image, fast=True))
    module, function = text.split(":")
    return getattr(importlib.import_module(module), function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="timm_name:size")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--preprocess", help="module:factory, factory(spec) -> image -> tensor")
    parser.add_argument("--name", default="runtime", help="results file name (benchmarks/results/NAME.md/.json)")
    parser.add_argument("--placements", nargs="*", default=[], choices=sorted(PLACEMENTS),
                        help="also measure each artifact with preprocessing in the graph")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    images = write_images(WORK / "images", args.images)
    factory = preprocess_factory(args.preprocess)
    compute_rows, app_rows, started, loads = [], [], time.time(), [os.getloadavg()[0]]
    for entry in args.models:
        name, size = entry.split(":")
        paths = build_artifacts(name, int(size), images)
        for artifact in ARTIFACTS:
            label = f"{name} {size}px {artifact}"
            print(f"benchmarking {label} ...", file=sys.stderr, flush=True)
            row = bench_artifact(paths[artifact], iterations=args.iterations, name=label)
            compute_rows.append(row)
            preprocess = factory(row_spec(paths[artifact])) if factory else None
            app_rows.append(bench_app(paths[artifact], images=images, rounds=args.rounds, iterations=args.iterations,
                                      preprocess=preprocess, name=label))
            # what edge-cls predict/serve load for streams, mapped per backend (ORT: idle threads sleep;
            # OpenVINO: the THROUGHPUT hint)
            app_rows.append(bench_app(paths[artifact], images=images, rounds=args.rounds, cold=False, tool=False,
                                      iterations=args.iterations, preprocess=preprocess,
                                      name=f"{label} throughput=True", throughput=True))
            for placement in args.placements:
                moved = with_placement(paths[artifact], placement)
                compute_rows.append(bench_artifact(moved, iterations=args.iterations, name=f"{label} {placement}"))
                app_rows.append(bench_app(moved, images=images, rounds=args.rounds, iterations=args.iterations,
                                          name=f"{label} {placement}"))
            loads.append(os.getloadavg()[0])
    write_results(args, compute_rows, app_rows, time.time() - started, loads)


def row_spec(path: Path):
    from edge_cls.artifact.manifest import load_manifest

    return load_manifest(path, verify=False).spec


def write_results(args: argparse.Namespace, compute_rows: list, app_rows: list, seconds: float,
                  loads: list[float]) -> None:
    from edge_cls.export import tool_versions

    command = "python benchmarks/runtime.py " + " ".join(sys.argv[1:])
    lines = [
        "# Runtimes as an app feels them",
        "",
        f"Machine: {machine_description()}{f', {device_model()}' if device_model() else ''}. "
        f"Tools: {', '.join(f'{k} {v}' for k, v in tool_versions().items())}.",
        f"Command: `{command.strip()}` ({seconds / 60:.0f} min). Random timm weights (speed only); "
        f"{len(app_rows[0:1]) and app_rows[0].images} photo-like 640x480 JPEG files; "
        f"preprocessing: {args.preprocess or 'the current PIL path (edge_cls.preprocess)'}.",
        f"The machine is shared and noisy (1-minute load average {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} CPUs during the run): compare ratios within a row, not milliseconds across runs.",
        "",
        "## Compute only (ready tensors, batch 1 latency, batch 8 throughput)",
        "",
        markdown_table(compute_rows),
        "",
        "## What an app feels",
        "",
        "*start->answer*: a fresh `python` process imports edge_cls.runtimes, loads the artifact (hashes "
        "verified) and answers for one JPEG; *load->answer*: load() to first answer inside that process; "
        "*warm*: the same with the runtime already imported; *peak RSS*: that process's peak after 21 answers. "
        "*file->top5 p50*: one JPEG path to top-5, one at a time. Over all the JPEG files: *loop* is "
        "`predict(path)` per file, *batched* `predict_batch` (batches of 8, no overlap), *pipelined* "
        "`predict_stream` (batches of 8, decoding threads overlapping inference); *compute* the backend "
        "alone on ready batches of 8. Medians, (min-max) over interleaved rounds. *throughput=True* rows: the "
        "same artifact loaded with `load(path, throughput=True)`, as `edge-cls predict` and `serve` load it for "
        "streams (ONNX Runtime: `spin=False`, idle intra-op threads sleep instead of busy-waiting; OpenVINO: "
        "the THROUGHPUT performance hint); no cold start or peak RSS for those rows.",
        "",
        app_table(app_rows, markdown=True),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"machine": machine_description(), "device": device_model(), "command": command, "load_average": loads,
         "compute": [r.to_dict() for r in compute_rows], "app": [r.to_dict() for r in app_rows]}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
