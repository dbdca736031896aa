"""Property tests of the manifest parser: whatever the JSON, a Manifest or an ArtifactError, quickly."""

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_cls.artifact.manifest import Manifest
from edge_cls.artifact.schema import MAX_INPUT_SIDE, parse_json
from edge_cls.errors import ArtifactError
from edge_cls.preprocess import PreprocessSpec

SETTINGS = settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children,
                                                                               max_size=5),
    max_leaves=30,
)

VALID = Manifest(
    backend="openvino", precision="int8", model_file="model.xml", spec=PreprocessSpec(input_size=(32, 32)),
    labels=["cat", "dog"], files=[], tools={"edge-cls": "0.1"}, parity={"top1_agreement": 0.98, "images": 50},
    accuracy={"top1": 0.9, "images": 50, "split": "test"}, recipe="ov-nncf-mixed", accepted_drop=False,
    search={"bar": 0.01, "candidates": [{"recipe": "ov-nncf-mixed", "top1": 0.9, "p50_ms": 1.5}]},
)
VALID_DICT = {**VALID.to_dict(), "files": [
    {"path": "model.xml", "sha256": "a" * 64, "bytes": 10}, {"path": "model.bin", "sha256": "b" * 64, "bytes": 20},
]}
# Every place a value can be replaced: top-level keys and the keys of the nested objects.
FIELD_PATHS = [(key,) for key in VALID_DICT] + [
    (block, key) for block in ("preprocess", "input", "output", "parity", "accuracy", "search")
    for key in VALID_DICT[block]
] + [("files", 0, key) for key in ("path", "sha256", "bytes")] + [("labels", 0), ("search", "candidates", 0, "top1")]


def parse(data):
    """The parser under test; anything but a Manifest or an ArtifactError fails the property."""
    try:
        manifest = Manifest.from_dict(data, source="fuzz")
    except ArtifactError:
        return None
    check_invariants(manifest)
    return manifest


def check_invariants(manifest):
    assert manifest.labels and all(isinstance(label, str) and label for label in manifest.labels)
    assert manifest.model_file in {f.path for f in manifest.files}
    assert all(1 <= side <= MAX_INPUT_SIDE for side in manifest.spec.input_size)
    assert all(math.isfinite(v) for v in (*manifest.spec.mean, *manifest.spec.std))
    assert Manifest.from_dict(manifest.to_dict()).to_dict() == manifest.to_dict()


def test_the_valid_manifest_parses():
    assert parse(json.loads(json.dumps(VALID_DICT))) is not None


@SETTINGS
@given(json_values)
def test_any_json_value_is_a_manifest_or_an_artifact_error(value):
    parse(value)


@SETTINGS
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_fail_cleanly(raw):
    try:
        data = parse_json(raw, "fuzz")
    except ArtifactError:
        return
    parse(data)


@SETTINGS
@given(st.sampled_from(FIELD_PATHS), json_values | st.just("__delete__"))
def test_each_field_replaced_by_any_value(path, value):
    data = json.loads(json.dumps(VALID_DICT))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if value == "__delete__":
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    parse(data)
