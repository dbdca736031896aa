"""The search index end to end, on the real embedded store (LanceDB): records of a real artifact in, "images
like this one whose calibrated score for X >= t" out, checked against an exhaustive search in numpy; and
text -> images through a zero-shot artifact of a small random-weight CLIP (this tests the plumbing - the
text tower, the shared embedding space, the query - not the quality of the answers)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lancedb", reason="the search index needs LanceDB: pip install 'edge-cls[index]'")

from edge_cls.errors import ConfigError, DataError
from edge_cls.vector_index import ImageIndex, read_records

CLI = [sys.executable, "-m", "edge_cls.cli"]


def run(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digit_records(artifacts, digits_root):
    from edge_cls.runtimes import load
    from edge_cls.runtimes.records import records

    paths = sorted(str(p) for p in (digits_root / "test").rglob("*.png"))
    with load(artifacts["onnx-fp32"]) as clf:
        return list(records(clf, paths, k=3, embeddings=True))


def exhaustive(records, query, label, threshold, k):
    """The reference answer: every record that passes the filter, ranked by cosine distance."""
    kept = [r for r in records if any(p["label"] == label and p["score"] >= threshold for p in r["predictions"])]
    vectors = np.array([r["embedding"] for r in kept], np.float64)
    distance = 1 - vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    return [kept[i]["path"] for i in np.argsort(distance, kind="stable")[:k]], np.sort(distance)[:k]


def test_similar_images_filtered_by_a_calibrated_score(digit_records, tmp_path):
    index = ImageIndex(tmp_path / "db")
    assert index.add(iter(digit_records)) == 60 and index.count == 60
    label = max({r["answer"] for r in digit_records}, key=lambda a: sum(r["answer"] == a for r in digit_records))
    threshold = float(np.median([r["predictions"][0]["score"] for r in digit_records if r["answer"] == label]))
    query = np.array(digit_records[0]["embedding"], np.float32)
    hits = index.similar(query, k=5, min_scores={label: threshold})
    paths, distances = exhaustive(digit_records, query, label, threshold, 5)
    assert [h.path for h in hits] == paths and np.allclose([h.distance for h in hits], distances, atol=1e-5)
    assert all(h.scores[label] >= threshold for h in hits)
    like = index.like(digit_records[3]["path"], k=3)
    assert like[0].path == digit_records[3]["path"] and like[0].distance == pytest.approx(0, abs=1e-6)
    with pytest.raises(DataError, match="not in the index"):
        index.vector_of("missing.png")
    with pytest.raises(ConfigError, match="probability"):
        index.similar(query, min_scores={label: 2})
    assert index.similar(query, min_scores={"it's not a label": 0.1}) == []  # quoted, not injected


def test_records_of_another_embedding_space_are_refused(digit_records, tmp_path):
    index = ImageIndex(tmp_path / "db")
    index.add(digit_records[:5])
    other = [{**r, "artifact": {**r["artifact"], "embedding_space": "f" * 64}} for r in digit_records[5:7]]
    with pytest.raises(DataError, match="different embedding spaces"):
        index.add(other)
    with pytest.raises(DataError, match="has no embedding"):
        index.add([{k: v for k, v in digit_records[7].items() if k != "embedding"}])
    assert index.count == 5


@pytest.mark.slow
def test_the_cli_indexes_predict_records_and_searches_them(artifacts, digits_root, tmp_path):
    records = tmp_path / "records.jsonl"
    predicted = run("predict", artifacts["openvino-fp32"], digits_root / "test", "-r", "--jsonl", "--embeddings",
                    "--topk", "3")
    assert predicted.returncode == 0, predicted.stderr
    records.write_text(predicted.stdout)
    assert run("index", tmp_path / "db", records).returncode == 0
    rows = list(read_records([records]))
    first = rows[0]
    label = first["answer"]
    result = run("search", tmp_path / "db", "--like", first["path"], "--min-score", f"{label}=0.0", "--limit", "4",
                 "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    paths, _ = exhaustive(rows, np.array(first["embedding"]), label, 0.0, 4)
    assert [h["path"] for h in hits] == paths and hits[0]["path"] == first["path"]
    bad = run("search", tmp_path / "db", "--like", first["path"], "--min-score", "nonsense")
    assert bad.returncode == 1 and "LABEL=P" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_text_to_images_through_a_zero_shot_artifact(digits_root, tmp_path):
    """Random-weight CLIP: plumbing only. The text goes through the text tower here, then the artifact's
    embedding space; the index answers what an exhaustive cosine search over the same vectors answers."""
    from edge_cls.artifact.embeddings import ArtifactEmbeddings
    from edge_cls.artifact.manifest import read_artifact
    from edge_cls.training.clip import text_embeddings

    config = tmp_path / "edgecls-tiny-clip.json"
    config.write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}))
    torch = pytest.importorskip("torch")
    from edge_cls.training.clip import load_clip

    torch.manual_seed(0)
    weights = tmp_path / "tiny_clip.pt"  # random, but the same in every process: a local weights file
    torch.save(load_clip(str(config), None)[0].state_dict(), weights)
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    out = tmp_path / "zs"
    built = run("zero-shot", "--clip-model", config, "--clip-pretrained", weights, "--labels", labels, "--calib-data",
                digits_root / "val",
                "--formats", "onnx", "--precisions", "fp32", "--output", out)
    assert built.returncode == 0, built.stderr[-2000:]
    artifact = out / "onnx-fp32"
    manifest, files = read_artifact(artifact)
    assert manifest.embeddings["source"] == "clip-image" and not manifest.embeddings["reduced"]
    predicted = run("predict", artifact, digits_root / "test", "-r", "--jsonl", "--embeddings")
    (tmp_path / "records.jsonl").write_text(predicted.stdout)
    assert run("index", tmp_path / "db", tmp_path / "records.jsonl").returncode == 0
    result = run("search", tmp_path / "db", "--text", "a photo of a seven", "--artifact", artifact, "--clip-model",
                 config, "--clip-pretrained", weights, "--limit", "5", "--json")
    assert result.returncode == 0, result.stderr
    space = ArtifactEmbeddings.from_artifact(manifest.embeddings, files)
    query = space.vectors(text_embeddings(str(config), weights, ["a photo of a seven"]))[0]
    rows = list(read_records([tmp_path / "records.jsonl"]))
    vectors = np.array([r["embedding"] for r in rows])
    expected = [rows[i]["path"] for i in np.argsort(-(vectors @ query), kind="stable")[:5]]
    assert [h["path"] for h in json.loads(result.stdout)] == expected
