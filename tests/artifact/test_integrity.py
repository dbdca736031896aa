"""The artifact directory against its manifest: only listed files, no links, sizes, hashes, bytes read once."""

import os
import threading

import pytest

from edge_cls.artifact.integrity import KEY_ENV, KEY_FILE_ENV
from edge_cls.artifact.manifest import Manifest, describe_files, load_manifest, read_artifact
from edge_cls.errors import ArtifactError
from edge_cls.preprocess import PreprocessSpec


def write_artifact(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    Manifest(
        backend="openvino", precision="fp32", model_file=next(iter(files)), spec=PreprocessSpec(input_size=(8, 8)),
        labels=["a", "b"], files=describe_files(directory, list(files)), tools={},
    ).save(directory)
    return directory


@pytest.fixture
def artifact(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    return write_artifact(tmp_path / "art", {"model.xml": b"<net/>", "weights/model.bin": b"\x00" * 64})


def test_bytes_are_read_once_and_match_the_manifest(artifact):
    manifest, files = read_artifact(artifact)
    assert files.verified and files.model == b"<net/>" and files.companions == {"weights/model.bin": b"\x00" * 64}
    assert sorted(files) == ["model.xml", "weights/model.bin"] and files.path() == artifact / "model.xml"
    # What was read is what a backend gets, whatever happens to the directory afterwards.
    (artifact / "model.xml").write_bytes(b"<evil/>")
    assert files.model == b"<net/>"


def test_an_unlisted_file_is_refused(artifact):
    # Before: an ONNX model's external-data file, not listed, could be altered and still load.
    (artifact / "model.onnx.data").write_bytes(b"weights the manifest never saw")
    with pytest.raises(ArtifactError, match="model.onnx.data is not listed in the manifest"):
        load_manifest(artifact)
    with pytest.raises(ArtifactError, match="is not listed"):
        read_artifact(artifact)
    assert load_manifest(artifact, verify=False).model_file == "model.xml"


@pytest.mark.parametrize("extra", [".DS_Store", "weights/extra.bin", "empty_dir/", "weights/sub/"])
def test_anything_unlisted_is_refused(artifact, extra):
    path = artifact / extra.rstrip("/")
    if extra.endswith("/"):
        path.mkdir()
    else:
        path.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="is not listed in the manifest"):
        load_manifest(artifact)


def test_a_symlinked_model_file_pointing_outside_is_refused(artifact, tmp_path):
    # Before: a symlink to a file outside the artifact, with the right hash, verified and ran.
    outside = tmp_path / "outside.xml"
    outside.write_bytes(b"<net/>")
    (artifact / "model.xml").unlink()
    (artifact / "model.xml").symlink_to(outside)
    with pytest.raises(ArtifactError, match="model.xml is a symbolic link"):
        load_manifest(artifact)
    with pytest.raises(ArtifactError, match="model.xml cannot be opened"):
        read_artifact(artifact, verify=False)  # not even without verification: links are never followed


def test_a_symlinked_directory_is_refused(artifact, tmp_path):
    (artifact / "weights").rename(tmp_path / "elsewhere")
    (artifact / "weights").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArtifactError, match="weights is a symbolic link"):
        read_artifact(artifact)


def test_the_artifact_directory_itself_may_be_a_link(artifact, tmp_path):
    (tmp_path / "latest").symlink_to(artifact)
    assert read_artifact(tmp_path / "latest")[1].model == b"<net/>"


def test_a_fifo_does_not_hang_the_loader(artifact):
    (artifact / "model.xml").unlink()
    os.mkfifo(artifact / "model.xml")
    result = {}

    def attempt(verify):
        try:
            read_artifact(artifact, verify=verify)
        except ArtifactError as e:
            result[verify] = str(e)

    for verify in (True, False):
        worker = threading.Thread(target=attempt, args=(verify,), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in result[True] and "not a regular file" in result[False]


@pytest.mark.parametrize("data, match", [
    (b"<net/>   ", "has 9 bytes but its manifest records 6"),
    (b"<net", "has 4 bytes but its manifest records 6"),
    (b"", "has 0 bytes"),
    (b"<nit/>", "does not match the sha256"),
])
def test_changed_files(artifact, data, match):
    (artifact / "model.xml").write_bytes(data)
    for read in (load_manifest, read_artifact):
        with pytest.raises(ArtifactError, match=match):
            read(artifact)


def test_a_manifest_that_is_a_symlink_is_refused(artifact, tmp_path):
    (artifact / "manifest.json").rename(tmp_path / "manifest.json")
    (artifact / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ArtifactError, match="manifest.json"):
        load_manifest(artifact)
