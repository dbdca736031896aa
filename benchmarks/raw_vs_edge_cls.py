"""edge-cls runtimes next to the raw tools at their defaults, in one run, on one machine.

For each model (random timm weights at 224 px, as in ../shared/FIELD-NOTES.md) the same ONNX
file runs through: PyTorch eager; a raw ``onnxruntime.InferenceSession``; edge-cls's ONNX Runtime
backend; raw OpenVINO at its defaults (bf16 on AMX CPUs); edge-cls's OpenVINO FP32 artifact (f32
hint); and edge-cls's OpenVINO INT8 (NNCF). Each row gives batch-1 p50 latency, its ratio to raw
ONNX Runtime measured in the same run, and top-1 agreement with PyTorch on 64 synthetic
photo-like images, so a faster row that changes answers shows as such.

    python benchmarks/raw_vs_edge_cls.py [--models mobilenetv3_small_100 efficientnet_b0] [--iterations 200]

Writes benchmarks/results/raw_vs_edge_cls.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge_cls.calibration_data import CalibrationSet
from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets, tool_versions
from edge_cls.measure.latency import time_calls
from edge_cls.measure.machine import machine_description
from edge_cls.runtimes import load
from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODELS = ["mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0"]


def photo_like(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """Smooth colour fields, hard-edged discs and noise: a stand-in for photos, offline."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack(
        [
            127 + 80 * np.sin(2 * np.pi * (rng.uniform(0.5, 4) * x / width + rng.uniform(0.5, 4) * y / height))
            for _ in range(3)
        ],
        axis=-1,
    )
    for _ in range(5):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, 80)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def bench_model(name: str, iterations: int, work: Path) -> list[dict]:
    import onnxruntime as ort
    import openvino as ov

    model = create_model(ModelRecipe(name=name, num_classes=1000)).eval()
    spec = spec_for_model(model)
    images = [photo_like(i) for i in range(64)]
    batch = np.stack([spec(image) for image in images])
    image_dir = work / f"{name}-images"
    image_dir.mkdir()
    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image).save(image_dir / f"{i}.png")
    reference = ReferenceSet.from_model(model, batch)
    exported = export_artifacts(
        model,
        spec,
        [str(i) for i in range(1000)],
        work / name,
        resolve_targets(["onnx", "openvino"], ["fp32", "int8"]),
        reference=reference,
        calibration=CalibrationSet.from_folder(image_dir, spec, size=64),
        model_name=name,
        # random weights: the INT8 rows are for speed, so their (meaningless) accuracy drop is accepted
        search=SearchSettings(accept_drop=True, only=("ort-qdq-s8s8", "ov-nncf-mixed")),
    )
    paths = {a.target.name: a.path for a in exported}
    one = np.ascontiguousarray(batch[:1])

    def row(label: str, run) -> dict:
        ms = time_calls(lambda: run(one), iterations=iterations)
        logits = np.concatenate([run(batch[i:i + 1]) for i in range(len(batch))])
        agree = float((logits.argmax(1) == reference.logits.argmax(1)).mean())
        return {"model": name, "path": label, "p50_ms": float(np.median(ms)), "top1_agreement": agree}

    rows = []
    with torch.inference_mode():
        rows.append(row("torch eager fp32", lambda b: model(torch.from_numpy(b)).numpy()))
    raw_ort = ort.InferenceSession(str(paths["onnx-fp32"] / "model.onnx"), providers=["CPUExecutionProvider"])
    rows.append(row("raw onnxruntime fp32 (defaults)", lambda b: raw_ort.run(None, {"input": b})[0]))
    for artifact in ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"):
        clf = load(paths[artifact])
        rows.append({**row(f"edge-cls {artifact}", clf.logits), "ran_as": clf.precision})
    core = ov.Core()
    raw_ov = core.compile_model(core.read_model(str(paths["onnx-fp32"] / "model.onnx")), "CPU")
    rows.append({**row("raw openvino fp32 IR (defaults)", lambda b: raw_ov(b)[0]),
                 "ran_as": raw_ov.get_property("INFERENCE_PRECISION_HINT").get_type_name()})
    baseline = next(r["p50_ms"] for r in rows if r["path"].startswith("raw onnxruntime"))
    for r in rows:
        r["vs_raw_ort"] = baseline / r["p50_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"benchmarking {name} ...", file=sys.stderr)
            rows += bench_model(name, args.iterations, Path(tmp))
    lines = [
        "# edge-cls runtimes next to the raw tools",
        "",
        f"Machine: {machine_description()}. Tools: {', '.join(f'{k} {v}' for k, v in tool_versions().items())}.",
        f"Command: `python benchmarks/raw_vs_edge_cls.py --models {' '.join(args.models)} --iterations {args.iterations}`.",
        "Batch 1, random timm weights at 224 px, p50 of the timed runs after warm-up; *speed-up* is raw ONNX Runtime "
        "p50 divided by the row's p50, both from this run; *agree* is top-1 agreement with PyTorch on 64 "
        "photo-like images. The machine is shared: compare ratios within a model, not milliseconds across runs.",
        "",
        "| model | path | ran as | p50 ms | speed-up vs raw ORT | agree |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['path']} | {r.get('ran_as', 'f32')} | {r['p50_ms']:.2f} | {r['vs_raw_ort']:.2f}x | "
            f"{100 * r['top1_agreement']:.1f}% |"
            for r in rows
        ],
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "raw_vs_edge_cls.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "raw_vs_edge_cls.json").write_text(
        json.dumps({"machine": machine_description(), "rows": rows}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
