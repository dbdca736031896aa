"""load() on real ONNX Runtime and OpenVINO: the backend runs the bytes that were checked, and nothing else."""

import shutil

import numpy as np
import pytest

from edge_cls.artifact.integrity import KEY_ENV, KEY_FILE_ENV
from edge_cls.artifact.manifest import Manifest, describe_files, load_manifest, read_artifact
from edge_cls.errors import ArtifactError
from edge_cls.runtimes import backend_class, load


@pytest.fixture(autouse=True)
def no_manifest_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def batch_of(classifier, images):
    return np.stack([classifier.preprocess(p) for p in images])


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_the_backend_loads_the_checked_bytes_not_the_path(artifact_copy, test_images, name):
    """Time of check = time of use: once read, the directory can change or vanish."""
    path = artifact_copy(name)
    with load(path) as reference:
        expected = reference.logits(batch_of(reference, test_images))
    manifest, files = read_artifact(path)
    shutil.rmtree(path)
    backend = backend_class(manifest.backend).open(files, manifest)
    np.testing.assert_allclose(backend.run(batch_of(reference, test_images)), expected, atol=1e-5)
    backend.close()


def test_a_symlinked_model_pointing_outside_does_not_run(artifact_copy, tmp_path):
    # Before: the link verified (same hash) and ran.
    path = artifact_copy("onnx-fp32")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(path / "model.onnx", outside)
    (path / "model.onnx").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        load(path)


def test_a_flipped_byte_in_the_openvino_weights_is_refused(artifact_copy):
    path = artifact_copy("openvino-int8")
    data = bytearray((path / "model.bin").read_bytes())
    data[len(data) // 3] ^= 0x01
    (path / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.bin does not match the sha256"):
        load(path)


@pytest.fixture
def external_data_artifact(artifact_copy):
    """The ONNX FP32 artifact re-saved with its weights in model.onnx.data, listed in the manifest."""
    import onnx

    path = artifact_copy("onnx-fp32")
    proto = onnx.load(str(path / "model.onnx"))
    onnx.save_model(proto, str(path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    manifest = load_manifest(path, verify=False)
    others = [f.path for f in manifest.files if f.path != "model.onnx"]  # the embeddings' basis and reference
    manifest.files = describe_files(path, ["model.onnx", "model.onnx.data", *others])
    manifest.save(path)
    return path


def test_listed_external_data_is_checked_and_loaded_from_memory(external_data_artifact, artifacts, test_images):
    with load(artifacts["onnx-fp32"]) as reference, load(external_data_artifact) as classifier:
        batch = batch_of(reference, test_images)
        np.testing.assert_allclose(classifier.logits(batch), reference.logits(batch), atol=1e-6)
    data = bytearray((external_data_artifact / "model.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (external_data_artifact / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx.data does not match the sha256"):
        load(external_data_artifact)


def test_unlisted_external_data_is_refused(external_data_artifact):
    # Before: a manifest listing model.onnx alone verified, and ONNX Runtime read the data file from disk.
    manifest: Manifest = load_manifest(external_data_artifact)
    manifest.files = [f for f in manifest.files if f.path != "model.onnx.data"]
    manifest.save(external_data_artifact)
    with pytest.raises(ArtifactError, match="model.onnx.data is not listed"):
        load(external_data_artifact)


def test_openvino_says_it_cannot_take_onnx_external_data(external_data_artifact):
    with pytest.raises(ArtifactError, match="backend='onnxruntime'"):
        load(external_data_artifact, backend="openvino")
