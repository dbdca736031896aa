"""Embeddings as the artifacts' second output: the same vectors as PyTorch on every backend, through the
Python API, the records and ``predict --jsonl --embeddings``; artifacts of one export share one space."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

CLI = [sys.executable, "-m", "edge_cls.cli"]
# The bar: every image at cosine >= 0.999 for FP32 and bf16. INT8 of a 2-epoch, 32-image-calibrated
# student is no showcase (OpenVINO INT8 measured min 0.63, mean 0.978 on the 60 check images): its mean is held.
BAR = {"fp32": ("min", 0.999), "bf16": ("min", 0.999), "fp16": ("min", 0.99), "int8": ("mean", 0.95)}


def meets_bar(cosine: np.ndarray, precision: str) -> bool:
    statistic, bar = BAR[precision]
    return float(getattr(cosine, statistic)()) >= bar


@pytest.fixture(scope="module")
def torch_embeddings(tiny_checkpoint):
    """PyTorch's raw embeddings (pre-logits features) of the tiny student: the reference."""
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.features import logits_and_embeddings

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    return lambda images: logits_and_embeddings(model, np.stack([checkpoint.spec(p) for p in images]))[1]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def bf16_artifact(tiny_checkpoint, digits_root, tmp_path_factory):
    """An OpenVINO bf16 artifact, where this CPU computes bf16 (else the test skips, saying so)."""
    from edge_cls.runtimes import backend_class

    if "bf16" not in backend_class("openvino").native_precisions("CPU"):
        pytest.skip("this CPU has no native bf16: OpenVINO would run the bf16 artifact in f32")
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    batch, targets = preprocess_split(load_splits(digits_root)["test"], checkpoint.spec)
    [artifact] = export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path_factory.mktemp("bf16"),
                                  resolve_targets(["openvino"], ["bf16"]), reference=ReferenceSet.from_model(
                                      model, batch, targets), search=SearchSettings(rounds=2, block=2))
    return artifact.path


def test_every_backend_delivers_pytorchs_vectors(artifacts, test_images, torch_embeddings):
    from edge_cls.runtimes import load

    reference = torch_embeddings(test_images)
    for name, path in artifacts.items():
        with load(path) as clf:
            logits, vectors = clf.logits_and_embeddings(np.stack([clf.preprocess(p) for p in test_images]))
            space = clf.embedding_space
            assert vectors.shape == (len(test_images), space.dims) and vectors.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # normalised
            assert np.array_equal(logits, clf.logits(np.stack([clf.preprocess(p) for p in test_images])))
            precision = clf.manifest.precision
            assert meets_bar(cosines(vectors, space.vectors(reference)), precision), name
            parity = clf.manifest.embeddings["parity"]
            assert parity[f"{BAR[precision][0]}_cosine"] >= BAR[precision][1] and parity["images"] == 60


def test_the_manifest_describes_the_embeddings_and_lists_their_files(artifacts):
    from edge_cls.artifact.manifest import load_manifest

    spaces = set()
    for path in artifacts.values():
        manifest = load_manifest(path)
        block = manifest.embeddings
        assert manifest.schema_minor >= 2 and block["output"] == "embeddings" and block["source"] == "pre-logits"
        assert block["reduced"] and block["normalized"] and block["dims"] <= 64 and block["features"] > block["dims"]
        assert {block["basis"], block["reference"]} <= {f.path for f in manifest.files}
        assert block["basis_fit"]["fitted_on"] == "calibration images" and block["drift"]["images"] == 60
        spaces.add(block["space"])
    assert len(spaces) == 1  # one export, one basis: ONNX and OpenVINO vectors are comparable


def test_records_carry_the_vector_and_its_space(artifacts, test_images):
    from edge_cls.runtimes import load
    from edge_cls.runtimes.records import records

    with load(artifacts["openvino-fp32"]) as clf:
        rows = list(records(clf, [str(p) for p in test_images[:3]], k=2, embeddings=True))
        expected = clf.embed(np.stack([clf.preprocess(p) for p in test_images[:3]]))
    assert all(row["artifact"]["embedding_space"] == clf.embedding_space.space for row in rows)
    np.testing.assert_array_equal(np.array([row["embedding"] for row in rows], np.float32), expected)  # exact
    assert "embedding" not in next(records(load(artifacts["onnx-fp32"]), [str(test_images[0])], k=1))


@pytest.mark.slow
def test_an_artifact_without_embeddings_says_so(tiny_checkpoint, digits_root, tmp_path, test_images):
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.errors import ConfigError
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.runtimes import load
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    batch, targets = preprocess_split(load_splits(digits_root)["test"], checkpoint.spec)
    [artifact] = export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(
        ["onnx"], ["fp32"]), reference=ReferenceSet.from_model(model, batch, targets), embeddings=None,
        search=SearchSettings(rounds=1, block=1))
    assert artifact.manifest.embeddings is None and "embeddings" not in artifact.manifest.to_dict()
    with load(artifact.path) as clf, pytest.raises(ConfigError, match="no embeddings output"):
        clf.embed(batch[:1])
    result = subprocess.run([*CLI, "predict", str(artifact.path), str(test_images[0]), "--jsonl", "--embeddings"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no embeddings output" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32", "onnx-int8", "openvino-int8", "openvino-bf16"])
def test_predict_jsonl_embeddings_match_pytorch(name, artifacts, bf16_artifact, test_images, torch_embeddings):
    """The issue's bar: ``predict --jsonl --embeddings`` vectors against PyTorch's, through the artifact's own
    projection, cosine >= 0.999 on every image at FP32 and bf16 (INT8: see BAR)."""
    from edge_cls.runtimes import load

    path = bf16_artifact if name == "openvino-bf16" else artifacts[name]
    result = subprocess.run([*CLI, "predict", str(path), *map(str, test_images), "--jsonl", "--embeddings", "-k", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()], np.float32)
    with load(path) as clf:
        expected = clf.embedding_space.vectors(torch_embeddings(test_images))
        precision = clf.manifest.precision
    assert meets_bar(cosines(got, expected), precision), (name, cosines(got, expected).min())


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-int8"])
def test_threads_get_exactly_the_single_thread_vectors(name, artifacts, test_images):
    from concurrent.futures import ThreadPoolExecutor

    from edge_cls.runtimes import load

    with load(artifacts[name]) as clf:
        inputs = np.stack([clf.preprocess(p) for p in test_images])
        reference = [clf.embed(inputs[i:i + 1]) for i in range(len(inputs))]

        def work(thread: int) -> int:
            return sum(not np.array_equal(clf.embed(inputs[(thread + c) % len(inputs)][None]),
                                          reference[(thread + c) % len(inputs)]) for c in range(50))

        with ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(work, range(4))) == 0


@pytest.mark.parametrize("content, message", [
    (np.zeros((3, 5), np.float32), "basis; the manifest says"),
    (np.array([{"a": 1}], dtype=object), "not a readable .npy"),
    (np.full((70, 256), np.nan, np.float32), "finite"),
])
def test_a_bad_basis_file_is_refused_at_load(artifact_copy, content, message):
    """Even with a manifest rewritten to match (no key): the basis is read from checked bytes, without pickle,
    and its shape and values are checked before any vector is made."""
    import io

    from edge_cls.artifact.manifest import describe_files, load_manifest
    from edge_cls.errors import ArtifactError
    from edge_cls.runtimes import load

    path = artifact_copy("onnx-fp32")
    buffer = io.BytesIO()
    np.save(buffer, content, allow_pickle=True)
    (path / "embeddings_basis.npy").write_bytes(buffer.getvalue())
    manifest = load_manifest(path, verify=False)
    manifest.files = describe_files(path, [f.path for f in manifest.files])
    manifest.save(path)
    with pytest.raises(ArtifactError, match=message):
        load(path)
