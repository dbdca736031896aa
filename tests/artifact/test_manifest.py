import json

import pytest

from edge_cls.artifact.integrity import KEY_ENV, KEY_FILE_ENV, SIGNATURE_NAME
from edge_cls.artifact.manifest import MANIFEST_NAME, Manifest, describe_files, load_manifest
from edge_cls.artifact.schema import MAX_MANIFEST_BYTES
from edge_cls.errors import ArtifactError, ConfigError
from edge_cls.preprocess import PreprocessSpec

KEY = "0123456789abcdef0123456789abcdef"


def make_manifest(directory, **fields):
    defaults = dict(
        backend="onnxruntime", precision="fp32", model_file="model.onnx",
        spec=PreprocessSpec(input_size=(32, 32)), labels=["a", "b"],
        files=describe_files(directory, ["model.onnx"]), tools={"edge-cls": "0.1.0"},
        parity={"top1_agreement": 1.0}, accuracy=None,
    )
    return Manifest(**{**defaults, **fields})


@pytest.fixture
def artifact_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    (tmp_path / "model.onnx").write_bytes(b"model bytes")
    make_manifest(tmp_path).save(tmp_path)
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


def test_search_fields_round_trip(artifact_dir):
    search = {"bar": 0.01, "metric": "top1", "candidates": [
        {"recipe": "ort-qdq-u8s8", "precision": "int8", "top1": 0.93, "p50_ms": 1.2, "verdict": "shipped"},
        {"recipe": "ort-fp16", "precision": "fp16", "top1": None, "p50_ms": 2.0, "verdict": "slower"},
    ]}
    manifest = make_manifest(artifact_dir, precision="bf16", recipe="ort-qdq-u8s8", search=search, accepted_drop=True)
    manifest.save(artifact_dir)
    loaded = load_manifest(artifact_dir)
    assert (loaded.recipe, loaded.search, loaded.accepted_drop, loaded.precision) == (
        "ort-qdq-u8s8", search, True, "bf16")


def test_schema_extension_rule(artifact_dir):
    """A newer minor's fields are ignored; an unknown field at a known minor, or another major, is refused;
    extensions are kept and round-trip; a manifest without schema_minor (written before 1.1) still loads."""
    from edge_cls.artifact.manifest import SCHEMA_MINOR, SCHEMA_VERSION

    assert json.loads((artifact_dir / MANIFEST_NAME).read_text())["schema_minor"] == SCHEMA_MINOR
    edit(artifact_dir, lambda d: d.update(schema_minor=SCHEMA_MINOR + 1, watermark={"bits": 8}))
    assert load_manifest(artifact_dir).labels == ["a", "b"]  # written by a newer edge-cls: its field ignored
    edit(artifact_dir, lambda d: d.update(schema_minor=SCHEMA_MINOR))
    refused = f"'watermark' is not part of manifest schema 1.{SCHEMA_MINOR}.*'extensions'"
    with pytest.raises(ArtifactError, match=refused):
        load_manifest(artifact_dir)
    edit(artifact_dir, lambda d: (d.pop("watermark"), d.update(extensions={"acme.site": {"camera": [1, 2]}})))
    loaded = load_manifest(artifact_dir)
    assert loaded.extensions == {"acme.site": {"camera": [1, 2]}}
    assert Manifest.from_dict(loaded.to_dict()).extensions == loaded.extensions
    from edge_cls.artifact.manifest import known_fields

    newer = known_fields(SCHEMA_MINOR) - known_fields(0)
    edit(artifact_dir, lambda d: [d.pop(name, None) for name in newer])
    assert load_manifest(artifact_dir).schema_minor == 0
    edit(artifact_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ArtifactError, match="unknown schema_version 2.*upgrade edge-cls"):
        load_manifest(artifact_dir)


# Each of these escaped as an internal error (TypeError, ValueError, ...) or passed unchecked before.
@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("labels"), "missing field 'labels'"),
    (lambda d: d.update(labels="ab"), "'labels' must be a list, got a string"),
    (lambda d: d.update(labels=[]), "non-empty"),
    (lambda d: d.update(labels=[["a"], "b"]), r"'labels\[0\]' must be a string, got a list"),
    (lambda d: d.update(labels=["a", ""]), r"'labels\[1\]' must be 1 to"),
    (lambda d: d.update(labels=["a", "b\x1b[2J"]), r"'labels\[1\]' contains the control character"),
    (lambda d: d.update(labels=["a", "\ud800"]), "not valid Unicode"),
    (lambda d: d.update(schema_version=99), "unknown schema_version 99"),
    (lambda d: d.update(schema_version="1"), "'schema_version' must be an integer, got a string"),
    (lambda d: d.update(schema_version=True), "'schema_version' must be an integer, got true or false"),
    (lambda d: d.update(backend="coreml"), "expected one of"),
    (lambda d: d.update(backend=["onnxruntime"]), "'backend' must be a string"),
    (lambda d: d.update(precision="int4"), "expected one of"),
    (lambda d: d.update(task={"a": 1}), "'task' must be a string"),
    (lambda d: d["preprocess"].update(crop_pct=3), "invalid 'preprocess'"),
    (lambda d: d["preprocess"].update(mean="abc"), "'preprocess.mean' must be a list, got a string"),
    (lambda d: d["preprocess"].update(mean=["a", 0, 0]), r"'preprocess.mean\[0\]' must be a number"),
    (lambda d: d["preprocess"].update(std=[1, 1, float("nan")]), r"'preprocess.std\[2\]' must be a finite number"),
    (lambda d: d["preprocess"].update(mean=5), "'preprocess.mean' must be a list, got an integer"),
    (lambda d: d["preprocess"].update(interpolation=["bilinear"]), "'preprocess.interpolation' must be a string"),
    (lambda d: d["preprocess"].update(input_size=[100000, 100000]), r"'preprocess.input_size\[0\]' must be >= 1"),
    (lambda d: d["preprocess"].update(input_size=[True, 32]), r"'preprocess.input_size\[0\]' must be an integer"),
    (lambda d: d["preprocess"].update(input_size="32"), "'preprocess.input_size' must be a list"),
    (lambda d: d["preprocess"].update(crop_pct="0.9"), "'preprocess.crop_pct' must be a number"),
    (lambda d: d.update(preprocess=[]), "'preprocess' must be an object, got a list"),
    (lambda d: d.update(model_file="other.onnx"), "not listed"),
    (lambda d: d.update(model_file=7), "'model_file' must be a string"),
    (lambda d: d["input"].update(shape=[-1, 3, 64, 64]), "does not match"),
    (lambda d: d["input"].update(dtype="uint8"), "'input.dtype' is 'uint8'"),
    (lambda d: d["output"].update(shape=[-1, 5]), r"'output.shape' is \[-1, 5\], expected \[-1, 2\]"),
    (lambda d: d.update(output=None), "'output' must be an object, got null"),
    (lambda d: d.update(format="something"), "not an edge-cls manifest"),
    (lambda d: d.update(format=["x"] * 10_000), "not an edge-cls manifest"),
    (lambda d: d.update(files={}), "'files' must be a list, got an object"),
    (lambda d: d.update(files=[]), "'files' must list"),
    (lambda d: d["files"].append(dict(d["files"][0])), "lists 'model.onnx' twice"),
    (lambda d: d["files"].append({**d["files"][0], "path": "manifest.json"}), "describes the artifact itself"),
    (lambda d: d["files"].__setitem__(0, "model.onnx"), r"'files\[0\]' must be an object, got a string"),
    (lambda d: d["files"][0].pop("sha256"), r"missing field 'files\[0\].sha256'"),
    (lambda d: d["files"][0].update(sha256="abc"), r"'files\[0\].sha256' must be 64 lowercase hex digits"),
    (lambda d: d["files"][0].update(sha256=d["files"][0]["sha256"].upper()), "64 lowercase hex"),
    (lambda d: d["files"][0].update(bytes=-1), r"'files\[0\].bytes' must be >= 0"),
    (lambda d: d["files"][0].update(bytes=1.5), r"'files\[0\].bytes' must be an integer, got a number"),
    (lambda d: d["files"][0].update(path="../model.onnx"), "inside the artifact"),
    (lambda d: d["files"][0].update(path="/etc/passwd"), "inside the artifact"),
    (lambda d: d["files"][0].update(path="a//model.onnx"), "inside the artifact"),
    (lambda d: d["files"][0].update(path="./model.onnx"), "inside the artifact"),
    (lambda d: d["files"][0].update(path="model\x00.onnx"), "inside the artifact"),
    (lambda d: d["files"][0].update(path=["model.onnx"]), r"'files\[0\].path' must be a string"),
    (lambda d: d.update(runtime_options={"inference_precision": ["f32"]}),
     "'runtime_options.inference_precision' must be a string or a number or true or false or null"),
    (lambda d: d.update(runtime_options=[]), "'runtime_options' must be an object"),
    (lambda d: d.update(tools={"torch": 2}), "'tools.torch' must be a string, got an integer"),
    (lambda d: d.update(parity=[1]), "'parity' must be an object, got a list"),
    (lambda d: d.update(parity={"top1_agreement": "all"}), "'parity.top1_agreement' must be a number"),
    (lambda d: d.update(parity={"top1_agreement": 1.5}), "'parity.top1_agreement' must be >= 0.0 and <= 1.0"),
    (lambda d: d.update(parity={"images": -3}), "'parity.images' must be >= 0"),
    (lambda d: d.update(parity={"note": {"deep": 1}}), "'parity.note' must be a string, number"),
    (lambda d: d.update(accuracy={"top1": None, "split": 3}), "'accuracy.split' must be a string"),
    (lambda d: d.update(recipe=3), "'recipe' must be a string"),
    (lambda d: d.update(accepted_drop="yes"), "'accepted_drop' must be true or false"),
    (lambda d: d.update(search="fast"), "'search' must be an object"),
    (lambda d: d.update(search={"candidates": {"a": 1}}), "'search.candidates' must be a list"),
    (lambda d: d.update(search={"candidates": [1]}), r"'search.candidates\[0\]' must be an object"),
    (lambda d: d.update(search={"candidates": [{"top1": [0.9]}]}), r"'search.candidates\[0\].top1' must be a string"),
    (lambda d: d.update(search={"bar": {"top1": {}}}), "'search.bar.top1' must be a string"),
    (lambda d: d.update(search={"metrics": [[1]]}), r"'search.metrics\[0\]' must be a string"),
    (lambda d: d.update(created_at=None), "'created_at' must be a string, got null"),
    (lambda d: d.update(model_name="x" * 5000), "'model_name' is 5000 characters long"),
])
def test_invalid_manifests_are_clear_errors(artifact_dir, change, match):
    edit(artifact_dir, change)
    with pytest.raises(ArtifactError, match=match):
        load_manifest(artifact_dir)


def test_a_manifest_that_is_not_an_object(artifact_dir):
    for text, match in (("[1, 2]", "must be an object, got a list"), ("null", "got null"), ('"x"', "got a string")):
        (artifact_dir / MANIFEST_NAME).write_text(text)
        with pytest.raises(ArtifactError, match=match):
            load_manifest(artifact_dir)


def test_deeply_nested_json_is_a_clear_error(artifact_dir):
    # RecursionError escaped before; 40 levels parse but are deeper than any manifest edge-cls writes.
    for depth, match in ((100_000, "nested too deeply"), (40, "nested more than 32 levels")):
        (artifact_dir / MANIFEST_NAME).write_text("[" * depth + "]" * depth)
        with pytest.raises(ArtifactError, match=match):
            load_manifest(artifact_dir)
    make_manifest(artifact_dir).save(artifact_dir)
    edit(artifact_dir, lambda d: d.update(search={"x": json.loads("[" * 40 + "]" * 40)}))
    with pytest.raises(ArtifactError, match="nested more than 32"):
        load_manifest(artifact_dir)


def test_huge_and_odd_json(artifact_dir):
    path = artifact_dir / MANIFEST_NAME
    path.write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ArtifactError, match="too large to be a manifest"):
        load_manifest(artifact_dir)
    path.write_text('{"schema_version": ' + "9" * 5000 + "}")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(artifact_dir)
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ArtifactError, match="not UTF-8"):
        load_manifest(artifact_dir)
    path.write_text('{"format": "edge-cls-artifact", "format": "other"}')
    with pytest.raises(ArtifactError, match="'format' appears twice"):
        load_manifest(artifact_dir)


def test_tampered_file_fails_hash_check(artifact_dir):
    (artifact_dir / "model.onnx").write_bytes(b"model bytez")
    with pytest.raises(ArtifactError, match="sha256"):
        load_manifest(artifact_dir)
    assert load_manifest(artifact_dir, verify=False).backend == "onnxruntime"


def test_size_is_compared_before_hashing(artifact_dir):
    (artifact_dir / "model.onnx").write_bytes(b"model bytes, and more")
    with pytest.raises(ArtifactError, match="has 21 bytes but its manifest records 11"):
        load_manifest(artifact_dir)


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


def test_signed_manifest_round_trip_and_refusals(artifact_dir, monkeypatch):
    """With a key, a manifest rewritten to match a changed file (the attack hashes cannot see) is refused."""
    manifest = make_manifest(artifact_dir)
    manifest.save(artifact_dir, key=KEY)
    assert (artifact_dir / SIGNATURE_NAME).read_text().startswith("hmac-sha256:")
    assert load_manifest(artifact_dir, key=KEY).labels == ["a", "b"]
    assert load_manifest(artifact_dir).labels == ["a", "b"]  # no key set: the signature is not needed

    (artifact_dir / "model.onnx").write_bytes(b"evil bytes!")
    make_manifest(artifact_dir).save(artifact_dir, key="another key, 16+ bytes long")  # re-hashed, re-signed
    assert load_manifest(artifact_dir).model_file == "model.onnx"  # hashes alone cannot tell
    with pytest.raises(ArtifactError, match="does not match manifest.json under this key"):
        load_manifest(artifact_dir, key=KEY)

    make_manifest(artifact_dir).save(artifact_dir)  # unsigned: a stale signature is removed
    assert not (artifact_dir / SIGNATURE_NAME).exists()
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ArtifactError, match="is not signed"):
        load_manifest(artifact_dir)


def test_key_from_a_file_and_a_too_short_key(artifact_dir, tmp_path_factory, monkeypatch):
    key_file = tmp_path_factory.mktemp("keys") / "manifest.key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    make_manifest(artifact_dir).save(artifact_dir)  # signed with the key from the file
    assert load_manifest(artifact_dir, key=KEY).backend == "onnxruntime"
    edit(artifact_dir, lambda d: d.update(model_name="renamed"))
    with pytest.raises(ArtifactError, match="changed after it was signed"):
        load_manifest(artifact_dir)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file.parent / "nope.key"))
    with pytest.raises(ConfigError, match="cannot read the manifest key file"):
        load_manifest(artifact_dir)
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_manifest(artifact_dir)
