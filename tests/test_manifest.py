import json

import pytest

from edge_cls.errors import ArtifactError
from edge_cls.manifest import MANIFEST_NAME, Manifest, describe_files, load_manifest
from edge_cls.preprocess import PreprocessSpec


@pytest.fixture
def artifact_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"model bytes")
    manifest = Manifest(
        backend="onnxruntime", precision="fp32", model_file="model.onnx",
        spec=PreprocessSpec(input_size=(32, 32)), labels=["a", "b"],
        files=describe_files(tmp_path, ["model.onnx"]), tools={"edge-cls": "0.1.0"},
        parity={"top1_agreement": 1.0}, accuracy=None,
    )
    manifest.save(tmp_path)
    return tmp_path


def edit(directory, change):
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(artifact_dir):
    manifest = load_manifest(artifact_dir)
    assert manifest.labels == ["a", "b"] and manifest.input_shape == [-1, 3, 32, 32]
    assert manifest.files[0].bytes == len(b"model bytes")
    assert Manifest.from_dict(manifest.to_dict()).to_dict() == manifest.to_dict()


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("labels"), "missing field 'labels'"),
    (lambda d: d.update(labels="ab"), "'labels' must be list"),
    (lambda d: d.update(labels=[]), "non-empty"),
    (lambda d: d.update(schema_version=99), "unknown schema_version 99"),
    (lambda d: d.update(schema_version="1"), "must be int"),
    (lambda d: d.update(backend="coreml"), "expected one of"),
    (lambda d: d.update(precision="int4"), "expected one of"),
    (lambda d: d["preprocess"].update(crop_pct=3), "invalid 'preprocess'"),
    (lambda d: d.update(model_file="other.onnx"), "not listed"),
    (lambda d: d["input"].update(shape=[-1, 3, 64, 64]), "does not match"),
    (lambda d: d.update(format="something"), "not an edge-cls manifest"),
    (lambda d: d["files"][0].pop("sha256"), "missing field 'sha256'"),
    (lambda d: d["files"][0].update(path="../model.onnx"), "inside the artifact"),
    (lambda d: d["files"][0].update(path="/etc/passwd"), "inside the artifact"),
])
def test_invalid_manifests_are_clear_errors(artifact_dir, change, match):
    edit(artifact_dir, change)
    with pytest.raises(ArtifactError, match=match):
        load_manifest(artifact_dir)


def test_tampered_file_fails_hash_check(artifact_dir):
    (artifact_dir / "model.onnx").write_bytes(b"model bytez")
    with pytest.raises(ArtifactError, match="sha256"):
        load_manifest(artifact_dir)
    assert load_manifest(artifact_dir, verify=False).backend == "onnxruntime"


def test_missing_file(artifact_dir):
    (artifact_dir / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_manifest(artifact_dir)


def test_not_json(artifact_dir):
    (artifact_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(artifact_dir)


def test_not_an_artifact_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        load_manifest(tmp_path / "file")
