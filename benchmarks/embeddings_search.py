"""From labels to a search index, measured on the demo build (``make demo`` first):

    flock /tmp/edge-cls-bench.lock python benchmarks/embeddings_search.py [--build build/demo]

1. embeddings: each shipped artifact's vectors against the PyTorch student's on the 500 test digits
   (cosine per image, raw output and as delivered), and the parity the manifest recorded on val;
2. drift from features: ``check``'s two-sample test on shifted folders of test digits (blurred,
   recoloured, a 20% change of class mix) and on fresh same-distribution folders (false alarms);
3. suggest-taxonomy: merges fitted on val, top-1 on test against the mean of 20 random merges of the
   same group sizes, at every level;
4. the index: records of the 500 test digits in LanceDB, filtered similar-image queries (median of 50),
   and the same query on 20,000 synthetic rows of the same width.

Writes ``benchmarks/results/embeddings_search.{md,json}`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edge_cls.data import load_splits, preprocess_split
from edge_cls.measure.machine import machine_description
from edge_cls.predictions import softmax
from edge_cls.quality.drift import compare
from edge_cls.quality.feature_drift import ALPHA, mmd_test
from edge_cls.quality.taxonomy_suggest import artifact_probabilities, suggest
from edge_cls.runtimes import load

RESULTS = Path(__file__).parent / "results"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embedding_parity(build: Path, artifacts: list[Path], test_batch: np.ndarray) -> list[dict]:
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.features import logits_and_embeddings

    raw_torch = logits_and_embeddings(Checkpoint.load(build / "checkpoints" / "student.pt").build(), test_batch)[1]
    rows = []
    for path in artifacts:
        with load(path) as clf:
            raw = clf.backend.run_outputs(test_batch, (clf.manifest.output_name, "embeddings"))[1]
            space = clf.embedding_space
            raw_cos, vec_cos = cosines(raw, raw_torch), cosines(space.vectors(raw), space.vectors(raw_torch))
            rows.append({"artifact": path.name, "precision": clf.manifest.precision, "ran_as": clf.precision,
                         "features": space.mean.shape[0], "dims": space.dims,
                         "explained_variance": space.block["basis_fit"]["explained_variance"],
                         "test_min_cosine_raw": float(raw_cos.min()), "test_mean_cosine_raw": float(raw_cos.mean()),
                         "test_min_cosine_vectors": float(vec_cos.min()),
                         "manifest_val_min_cosine": space.block["parity"]["min_cosine"]})
    return rows


def drift(artifact: Path, test_paths: list[Path]) -> dict:
    rng = np.random.default_rng(0)
    sample = [test_paths[i] for i in rng.choice(len(test_paths), 200, replace=False)]
    ones = [p for p in test_paths if p.parent.name == "1"][:40]  # 20% of 200 replaced by ones: ~11% -> ~29%
    others = [p for p in test_paths if p not in set(ones)]
    mix = [others[i] for i in rng.choice(len(others), 160, replace=False)] + ones
    sets = {
        "blurred (Gaussian, radius 1.2), 200": [Image.open(p).filter(ImageFilter.GaussianBlur(1.2)) for p in sample],
        "recoloured (RGB x 1, 0.55, 0.2), 200": [
            Image.fromarray((np.asarray(Image.open(p).convert("RGB")) * [1.0, 0.55, 0.2]).astype(np.uint8))
            for p in sample],
        "class mix: 20% of 200 replaced by ones": [str(p) for p in mix],
    }
    with load(artifact) as clf:
        def check(images: list) -> dict:
            logits, vectors = clf.logits_and_embeddings(np.stack([clf.spec(image) for image in images]))
            report = compare(clf.manifest.summary, softmax(logits, clf.decision.temperature), clf.labels)
            report.features = mmd_test(clf.embedding_space.reference, clf.embedding_space.drift_features(vectors))
            return {"p_value": report.features.p_value, "mmd2": report.features.statistic,
                    "threshold": report.features.threshold, "verdict": report.verdict,
                    "class_psi": report.class_shift, "confidence_psi": report.confidence_shift}

        shifted = {name: check(images) for name, images in sets.items()}
        fresh = [check([str(test_paths[i]) for i in rng.choice(len(test_paths), 100, replace=False)])
                 for _ in range(40)]
    return {"shifted": shifted, "fresh_draws": len(fresh), "fresh_flagged": sum(f["p_value"] < ALPHA for f in fresh),
            "fresh_p_values": [f["p_value"] for f in fresh],
            "fresh_psi_not_small": sum(f["verdict"] != "small" and f["p_value"] >= ALPHA for f in fresh)}


def taxonomy(artifact: Path, splits: dict) -> list[dict]:
    with load(artifact) as clf:
        fit = artifact_probabilities(clf, splits["val"])
        held_out = artifact_probabilities(clf, splits["test"])
        labels = clf.labels
    return suggest(fit, labels, held_out).rows()


def index_queries(artifact: Path, test_paths: list[Path]) -> dict:
    from edge_cls.runtimes.records import records
    from edge_cls.vector_index import ImageIndex

    with load(artifact) as clf:
        rows = list(records(clf, [str(p) for p in test_paths], k=3, embeddings=True))
    with tempfile.TemporaryDirectory() as tmp:
        index = ImageIndex(Path(tmp) / "db")
        started = time.perf_counter()
        index.add(rows)
        add_s = time.perf_counter() - started
        query = lambda i: index.like(rows[i]["path"], k=10, min_scores={rows[i]["answer"]: 0.9})  # noqa: E731
        real = _median_ms(query, 50)
        synthetic = _synthetic(Path(tmp) / "big", rows[0], 20_000)
    return {"rows": len(rows), "add_s": add_s, "filtered_like_ms_p50": real, **synthetic}


def overhead(build: Path, artifacts: list[Path], splits: dict) -> dict:
    """What the new steps add to ``edge-cls build``, each timed alone on the demo's own model and artifacts."""
    import shutil

    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.export.embeddings import EmbeddingSettings, add_embeddings, plan_embeddings
    from edge_cls.quality.taxonomy_suggest import build_report_section
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(build / "checkpoints" / "student.pt")
    model = checkpoint.build()
    val_batch, _ = preprocess_split(splits["val"], checkpoint.spec)
    calibration = CalibrationSet.from_split(splits["train"], checkpoint.spec, size=300, cache_dir=build / "cache")
    started = time.perf_counter()
    plan = plan_embeddings(model, val_batch, calibration.array, EmbeddingSettings())
    seconds = {"plan (PyTorch features of 300 + 500 images, PCA)": time.perf_counter() - started}
    with tempfile.TemporaryDirectory() as tmp:
        for path in artifacts:
            copy = Path(tmp) / path.name
            shutil.copytree(path, copy)
            manifest = load_manifest(copy)
            with load(copy) as clf:
                started = time.perf_counter()
                add_embeddings(manifest, copy, clf, plan, val_batch, "val")
                seconds[f"parity + drift reference, {path.name}"] = time.perf_counter() - started
        started = time.perf_counter()
        build_report_section(Path(tmp), artifacts[0], splits)
        seconds["suggested taxonomy section (500 + 500 images)"] = time.perf_counter() - started
    return seconds


def _synthetic(path: Path, template: dict, count: int) -> dict:
    from edge_cls.vector_index import ImageIndex

    rng = np.random.default_rng(0)
    dims = len(template["embedding"])
    index = ImageIndex(path)

    def fake(i: int) -> dict:
        vector = rng.standard_normal(dims)
        return {**template, "path": f"synthetic/{i}.png", "embedding": (vector / np.linalg.norm(vector)).tolist(),
                "predictions": [{"index": 0, "label": "0", "score": float(rng.random())}]}

    started = time.perf_counter()
    index.add(fake(i) for i in range(count))
    add_s = time.perf_counter() - started
    vector = np.array(template["embedding"], np.float32)
    return {"synthetic_rows": count, "synthetic_add_s": add_s,
            "synthetic_filtered_similar_ms_p50": _median_ms(lambda _: index.similar(vector, k=10,
                                                                                      min_scores={"0": 0.9}), 20)}


def _median_ms(call, repeats: int) -> float:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=Path("build/demo"))
    args = parser.parse_args()
    artifacts = sorted(p for p in (args.build / "artifacts").iterdir() if (p / "manifest.json").is_file())
    splits = load_splits(args.build / "data")
    test_paths = list(splits["test"].paths)
    with load(artifacts[0]) as clf:
        spec = clf.spec
    test_batch, _ = preprocess_split(splits["test"], spec)
    result = {"machine": machine_description(), "build": str(args.build),
              "embeddings": embedding_parity(args.build, artifacts, test_batch),
              "drift": drift(artifacts[0], [Path(p) for p in test_paths]),
              "taxonomy": taxonomy(artifacts[0], splits), "index": index_queries(artifacts[0], test_paths),
              "demo_overhead_seconds": overhead(args.build, artifacts, splits)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embeddings_search.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "embeddings_search.md").write_text(render(result, artifacts[0].name))
    print(render(result, artifacts[0].name))


def render(r: dict, first: str) -> str:
    lines = ["# From labels to a search index: the demo build", "", f"Machine: {r['machine']}.", "",
             "## Embeddings against the PyTorch student (500 test digits)", "",
             "| artifact | precision (ran as) | features -> dims (variance kept) | min cosine raw | mean | min cosine "
             "as delivered | min cosine on val (manifest) |", "|---|---|---|---|---|---|---|"]
    for e in r["embeddings"]:
        lines.append(f"| {e['artifact']} | {e['precision']} ({e['ran_as']}) | {e['features']} -> {e['dims']} "
                     f"({100 * e['explained_variance']:.1f}%) | {e['test_min_cosine_raw']:.5f} | "
                     f"{e['test_mean_cosine_raw']:.5f} | {e['test_min_cosine_vectors']:.5f} | "
                     f"{e['manifest_val_min_cosine']:.5f} |")
    d = r["drift"]
    lines += ["", f"## Drift from features (`{first}`, reference: its 500 validation digits)", "",
              "| folder | MMD^2 | threshold (alpha 0.01) | p-value | check verdict | class PSI |", "|---|---|---|---|---|---|"]
    for name, s in d["shifted"].items():
        lines.append(f"| {name} | {s['mmd2']:.4f} | {s['threshold']:.4f} | {s['p_value']:.4f} | {s['verdict']} | "
                     f"{s['class_psi']:.3f} |")
    lines += ["", f"Fresh folders of 100 test digits (same distribution), {d['fresh_draws']} draws: "
              f"{d['fresh_flagged']} flagged by the feature test at alpha 0.01 (median p "
              f"{np.median(d['fresh_p_values']):.3f}); {d['fresh_psi_not_small']} more got a PSI verdict above small.", "",
              "## suggest-taxonomy (fitted on val, judged on test)", "",
              "| groups | merged | top-1 val | top-1 test | random merges, same sizes (20 draws) |", "|---|---|---|---|---|"]
    for t in r["taxonomy"]:
        lines.append(f"| {t['groups']} | {t['merged'] or '-'} | {100 * t['fit_accuracy']:.1f}% | "
                     f"{100 * t['eval_accuracy']:.1f}% | {100 * t['random_mean']:.1f}% ± {100 * t['random_std']:.1f} |")
    i = r["index"]
    lines += ["", "## The index (LanceDB, exhaustive search, prefilter)", "",
              f"{i['rows']} records added in {i['add_s']:.2f} s; 'like this image, score for its answer >= 0.9', k=10: "
              f"{i['filtered_like_ms_p50']:.1f} ms p50. {i['synthetic_rows']:,} synthetic rows: added in "
              f"{i['synthetic_add_s']:.1f} s, filtered similar search {i['synthetic_filtered_similar_ms_p50']:.1f} ms p50.",
              "", "## What the new steps add to `edge-cls build` (each timed alone)", "", "| step | seconds |", "|---|---|",
              *[f"| {k} | {v:.2f} |" for k, v in r["demo_overhead_seconds"].items()],
              f"| total | {sum(r['demo_overhead_seconds'].values()):.2f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
