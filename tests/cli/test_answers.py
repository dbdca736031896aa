"""Answers you can act on, through the CLI on real artifacts: calibrated scores, abstention,
hierarchies, production-data checks, and one JSON record per image for pipelines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

CLI = [sys.executable, "-m", "edge_cls.cli"]


def run(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_artifacts_carry_a_calibration_fitted_on_held_out_images(artifacts):
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.runtimes import load

    manifest = load_manifest(artifacts["onnx-fp32"])
    calibration = manifest.calibration
    assert calibration["method"] == "temperature" and calibration["fitted_on"] == "test"
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9  # what temperature scaling minimises
    assert manifest.summary["images"] == 60 and len(manifest.summary["class_shares"]) == 10
    with load(artifacts["onnx-fp32"]) as clf:
        [top] = clf.predict(np.zeros((28, 28), np.uint8), k=1)
        [raw] = clf.predict(np.zeros((28, 28), np.uint8), k=1, calibrated=False)
        assert top.raw_score == pytest.approx(raw.score) and top.index == raw.index
        if abs(calibration["temperature"] - 1) > 1e-3:
            assert top.score != pytest.approx(raw.score)


def test_min_confidence_answers_unknown(artifacts, test_images):
    result = run("predict", artifacts["onnx-fp32"], *test_images, "--min-confidence", "0.999", "--json")
    assert result.returncode == 0, result.stderr
    answers = [item["predictions"][0] for item in json.loads(result.stdout)]
    assert any(a.get("kind") == "unknown" and a["label"] == "unknown" for a in answers)  # a 2-epoch student is unsure
    relaxed = json.loads(run("predict", artifacts["onnx-fp32"], *test_images, "--min-confidence", "0", "--json").stdout)
    assert all("kind" not in item["predictions"][0] for item in relaxed)


@pytest.mark.slow
def test_a_taxonomy_answers_up_the_tree(tiny_checkpoint, digits_root, tmp_path, test_images):
    taxonomy = tmp_path / "parity.yaml"
    taxonomy.write_text("".join(f"'{d}': {'even' if d % 2 == 0 else 'odd'}\n" for d in range(10))
                        + "even: digit\nodd: digit\n")
    out = tmp_path / "out"
    result = run("export", "--checkpoint", tiny_checkpoint, "--calib-data", digits_root / "val", "--formats", "onnx",
                 "--precisions", "fp32", "--taxonomy", taxonomy, "--output", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["taxonomy"]["3"] == "odd" and manifest["taxonomy"]["odd"] == "digit"
    predicted = json.loads(run("predict", out / "onnx-fp32", *test_images, "--min-confidence", "0.999",
                               "--json").stdout)
    answers = [item["predictions"][0] for item in predicted]
    ancestors = [a for a in answers if a.get("kind") == "ancestor"]
    assert ancestors and {a["label"] for a in ancestors} <= {"even", "odd", "digit"}  # the root always clears
    assert not any(a.get("kind") == "unknown" for a in answers)
    assert all(a["path"][0] == "digit" for a in answers)
    bad = tmp_path / "cycle.yaml"
    bad.write_text("'1': odd\nodd: '1'\n")
    error = run("export", "--checkpoint", tiny_checkpoint, "--calib-data", digits_root / "val", "--formats", "onnx",
                "--precisions", "fp32", "--taxonomy", bad, "--output", tmp_path / "o2")
    assert error.returncode == 1 and "cycle" in error.stderr and "Traceback" not in error.stderr


@pytest.fixture(scope="module")
def many_images(demo_root, tmp_path_factory):
    """3,000 real digit PNGs in nested folders."""
    root = tmp_path_factory.mktemp("many")
    for i, path in enumerate(sorted((demo_root / "train").rglob("*.png"))[:3000]):
        target = root / f"batch{i // 500}" / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    return root


def _predict_with_peak_rss(artifact: Path, folder: Path, tmp_path: Path, name: str) -> tuple[list[str], int]:
    script = ("import sys; from edge_cls.cli import main; rc = main(sys.argv[1:]); "
              "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
              "print('PEAK', peak, file=sys.stderr); sys.exit(rc)")
    out = tmp_path / f"{name}.jsonl"
    with open(out, "w") as f:
        result = subprocess.run([sys.executable, "-c", script, "predict", str(artifact), str(folder), "--recursive",
                                 "--jsonl", "-k", "3"], stdout=f, stderr=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK")))
    return out.read_text().splitlines(), peak


@pytest.mark.slow
def test_jsonl_over_thousands_of_images_in_bounded_memory(artifacts, many_images, tmp_path):
    few = tmp_path / "few"
    shutil.copytree(many_images / "batch0", few / "batch0")
    lines, peak = _predict_with_peak_rss(artifacts["onnx-int8"], many_images, tmp_path, "many")
    few_lines, few_peak = _predict_with_peak_rss(artifacts["onnx-int8"], few, tmp_path, "few")
    assert len(lines) == 3000 and len(few_lines) == 500
    records = [json.loads(line) for line in lines]
    assert all(len(r["predictions"]) == 3 and r["artifact"]["id"] == "onnx-int8" for r in records)
    assert len({r["artifact"]["manifest_sha256"] for r in records}) == 1
    assert records[0]["path"].endswith(".png") and "batch0" in records[0]["path"] and "batch5" in records[-1]["path"]
    assert peak - few_peak < 40_000, (peak, few_peak)  # kB: 6x the images, not 6x the memory
    assert all(0 <= p["score"] <= 1 and 0 <= p["raw_score"] <= 1 for r in records for p in r["predictions"])


def test_records_from_the_python_api_match_the_cli(artifacts, test_images):
    from edge_cls.runtimes import load
    from edge_cls.runtimes.records import records

    cli = [json.loads(line) for line in run("predict", artifacts["openvino-fp32"], *test_images, "--jsonl",
                                            "-k", "2").stdout.splitlines()]
    with load(artifacts["openvino-fp32"]) as clf:
        api = list(records(clf, [str(p) for p in test_images], k=2))
    assert [r["answer"] for r in api] == [r["answer"] for r in cli]
    indices = [[p["index"] for p in r["predictions"]] for r in api]
    assert indices == [[p["index"] for p in r["predictions"]] for r in cli]


def test_check_compares_production_images_with_validation(artifacts, digits_root, tmp_path):
    labelled = run("check", artifacts["onnx-fp32"], "--images", digits_root / "val")
    assert labelled.returncode == 0, labelled.stderr
    assert "top-1:" in labelled.stdout and "calibration (ECE):" in labelled.stdout and "verdict:" in labelled.stdout
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for path in sorted((digits_root / "val").rglob("*.png")):
        ImageOps.invert(Image.open(path).convert("L")).save(inverted / f"{path.parent.name}_{path.name}")
    shifted = json.loads(run("check", artifacts["onnx-fp32"], "--images", inverted, "--json").stdout)
    same = json.loads(run("check", artifacts["onnx-fp32"], "--images", digits_root / "val", "--json").stdout)
    assert "top1" not in shifted["current"]  # a flat folder: no labels
    assert shifted["class_shift_psi"] > same["class_shift_psi"] and shifted["verdict"] in ("moderate", "large")
    assert shifted["classes_that_moved_most"]


@pytest.mark.slow
def test_multi_label_artifacts_answer_with_their_per_class_thresholds(multilabel_root, tmp_path):
    """build through the CLI on multi-label data with --min-precision: each artifact carries per-class thresholds
    fitted on the validation split (the lowest reaching 90% precision there), and predict answers with every
    class at or above its own threshold."""
    from edge_cls.runtimes import load

    out = tmp_path / "tags"
    result = run("build", "--data-dir", multilabel_root, "--kd-model-name", "test_vit", "--model", "test_efficientnet",
                 "--img-size", "32", "--teacher-epochs", "1", "--epochs", "1", "--no-compare-alone",
                 "--formats", "onnx", "--recipes", "ort-qdq-u8s8", "--calibration-size", "16",
                 "--bench-iterations", "3", "--min-precision", "0.9", "--output", out, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "artifacts" / "onnx" / "manifest.json").read_text())
    thresholds = manifest["calibration"]["thresholds"]
    assert manifest["task"] == "multi_label" and manifest["calibration"]["method"] == "thresholds"
    assert manifest["calibration"]["rule"] == "precision>=0.9"
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.quality.confidence import class_thresholds

    with load(out / "artifacts" / "onnx") as clf:
        batch, targets = preprocess_split(load_splits(multilabel_root)["val"], clf.spec)
        expected = class_thresholds(clf.logits(batch), targets, precision=0.9)
    np.testing.assert_allclose(thresholds, expected, rtol=1e-6)
    images = [line.split(",")[0] for line in (multilabel_root / "test.csv").read_text().splitlines()[1:7]]
    answered = json.loads(run("predict", out / "artifacts" / "onnx", *images, "--topk", "12", "--json").stdout)
    with load(out / "artifacts" / "onnx") as clf:
        for item, path in zip(answered, images):
            scores = 1 / (1 + np.exp(-clf.logits(clf.spec(path)[None])[0].astype(np.float64)))
            expected = {clf.labels[i] for i in range(12) if scores[i] >= thresholds[i]}
            labels = {p["label"] for p in item["predictions"]}
            assert labels == expected or (not expected and labels == {"unknown"})
    checked = run("check", out / "artifacts" / "onnx", "--images", Path(images[0]).parent, "--json")
    assert checked.returncode == 0, checked.stderr  # multi-label: the embeddings are what can be compared
    assert set(json.loads(checked.stdout)["feature_shift"]) >= {"p_value", "statistic", "threshold", "flagged"}
