"""Preprocessing compiled into the graph (OpenVINO PrePostProcessor, ONNX operators in front), loaded
through the public runtime API on both CPU backends: uint8 pixels in, the float path's answers out;
a file, its decoded array and its BGR frame give the same answers; the choice is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge_cls.artifact.manifest import MANIFEST_NAME, load_manifest
from edge_cls.errors import ArtifactError, ConfigError
from edge_cls.export.formats import FORMATS
from edge_cls.export.preprocess_choice import PlacementSettings, candidates, choose_placement, rebuild_artifact
from edge_cls.preprocess import Frame
from edge_cls.preprocess.placement import Placement
from edge_cls.runtimes import load

NORMALISE = Placement(graph_input="uint8")
FAST_NORMALISE = Placement(graph_input="uint8", host_resize="fast")


def _format(artifact) -> str:
    return next(name for name, fmt in FORMATS.items() if fmt.backend == load_manifest(artifact).backend)


@pytest.fixture(scope="module")
def ingraph(artifacts, tmp_path_factory):
    """The FP32 artifacts of the tiny student rebuilt to take uint8 pixels: (name, placement) -> directory."""
    out = tmp_path_factory.mktemp("ingraph")
    built = {}
    for name in ("onnx-fp32", "openvino-fp32"):
        fmt = FORMATS[_format(artifacts[name])]
        for placement in (NORMALISE, Placement(graph_input="uint8", graph_resize=fmt.graph_resize)):
            directory = out / f"{name}-{placement.graph_resize or 'normalise'}"
            rebuild_artifact(artifacts[name], directory, load_manifest(artifacts[name]), fmt, placement)
            built[name, placement.resize_in_graph] = directory
    return built


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_graph_that_normalises_gives_the_float_paths_logits(artifacts, ingraph, test_images, name):
    with load(artifacts[name]) as host, load(ingraph[name, False]) as graph:
        assert graph.manifest.placement == NORMALISE and graph.manifest.input_shape == [-1, 32, 32, 3]
        pixels = np.stack([graph.preprocess(p) for p in test_images])
        assert pixels.dtype == np.uint8 and pixels.shape == (len(test_images), 32, 32, 3)
        expected = host.logits(np.stack([host.preprocess(p) for p in test_images]))
        np.testing.assert_allclose(graph.logits(pixels), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
@pytest.mark.parametrize("resize_in_graph", [False, True])
def test_file_array_and_bgr_frame_give_the_same_answers(ingraph, test_images, tmp_path, name, resize_in_graph):
    rgb = np.asarray(Image.open(test_images[0]).convert("RGB").resize((90, 70)))
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    with load(ingraph[name, resize_in_graph]) as clf:
        images = [path, rgb, Frame(np.ascontiguousarray(rgb[:, :, ::-1]), "BGR")]
        answers = [clf.predict(image, k=3) for image in images]
        assert answers[0] == answers[1] == answers[2]
        batch = clf.predict_batch(images, k=3)
        assert [r.predictions for r in batch] == answers


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_graph_that_resizes_takes_crops_of_any_size(ingraph, test_images, name):
    with load(ingraph[name, True]) as clf:
        assert clf.manifest.input_shape == [-1, -1, -1, 3]
        crops = [clf.preprocess(np.zeros((h, w, 3), np.uint8) + 100) for h, w in ((40, 60), (70, 50))]
        scale = np.floor(32 / clf.spec.crop_pct)  # timm's shorter side; its centre 32 px are kept
        for crop, short in zip(crops, (40, 50)):  # within a pixel: timm truncates the long side of its resize
            assert crop.shape[2] == 3 and all(abs(side - 32 * short / scale) <= 1 for side in crop.shape[:2])
        assert clf.logits(crops).shape == (2, len(clf.labels))
        results = list(clf.predict_stream(test_images[:5], k=1, batch_size=2, workers=1))
        assert all(r.ok for r in results) and len(results) == 5


def test_uint8_artifact_refuses_a_float_batch(ingraph):
    with load(ingraph["onnx-fp32", False]) as clf, pytest.raises(ConfigError, match="uint8 batch of shape"):
        clf.logits(np.zeros((1, 3, 32, 32), np.float32))


def test_manifest_records_the_placement_and_an_old_reader_refuses_a_uint8_input(ingraph):
    directory = ingraph["onnx-fp32", False]
    data = json.loads((directory / MANIFEST_NAME).read_text())
    assert data["input"]["dtype"] == "uint8" and data["input"]["shape"] == [-1, 32, 32, 3]
    assert data["preprocess_placement"]["steps"]["normalise"] == "graph"
    # What a reader of schema 1.1 sees: no placement it knows of, so a float32 input is expected.
    from edge_cls.artifact.manifest import FIELDS_OF_MINOR

    for name in FIELDS_OF_MINOR[2]:
        data.pop(name, None)
    data["schema_minor"] = 1
    (directory.parent / "edited").mkdir(exist_ok=True)
    for entry in directory.iterdir():
        (directory.parent / "edited" / entry.name).write_bytes(entry.read_bytes())
    (directory.parent / "edited" / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="input.dtype"):
        load_manifest(directory.parent / "edited")


def test_candidates_follow_the_format_table():
    onnx = candidates(FORMATS["onnx"])
    assert Placement() in onnx and NORMALISE in onnx and FAST_NORMALISE in onnx
    assert [p.graph_resize for p in onnx if p.resize_in_graph] == [FORMATS["onnx"].graph_resize]
    assert all(not p.in_graph for p in candidates(FORMATS["tensorrt"]))


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_choose_placement_measures_every_candidate_and_ships_a_working_artifact(artifacts, test_images, tmp_path,
                                                                                 name):
    staging = tmp_path / "artifact"
    staging.mkdir()
    for entry in artifacts[name].iterdir():
        (staging / entry.name).write_bytes(entry.read_bytes())
    manifest = load_manifest(staging)
    choose_placement(staging, manifest, _format(staging), test_images,
                     PlacementSettings(rounds=3, timing_images=4))
    manifest.save(staging)
    shipped = load_manifest(staging)
    rows = shipped.placement_choice["candidates"]
    assert len(rows) == len(candidates(FORMATS[_format(staging)]))
    assert rows[0]["verdict"] == "reference" and rows[0]["expected_drop_points"] == 0
    assert sum(r["verdict"] == "shipped" for r in rows) == 1 or rows[0]["verdict"] == "reference"
    assert all(r["images"] == len(test_images) for r in rows if "error" not in r)
    with load(staging) as clf, load(artifacts[name]) as original:
        assert clf.predict(test_images[0], k=1)[0].index == original.predict(test_images[0], k=1)[0].index


def test_without_check_files_the_exact_host_path_stays(artifacts, tmp_path):
    manifest = load_manifest(artifacts["onnx-fp32"])
    choose_placement(tmp_path, manifest, "onnx", None)
    assert manifest.placement == Placement() and "no check images" in manifest.placement_choice["reason"]


PEAK_SCRIPT = ("import sys; from edge_cls.cli import main; rc = main(sys.argv[1:]); "
               "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
               "print('PEAK', peak, file=sys.stderr); sys.exit(rc)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
@pytest.mark.parametrize("resize_in_graph", [False, True])
def test_a_4000x3000_jpeg_through_edge_cls_predict_stays_under_300_mb(ingraph, tmp_path, name, resize_in_graph):
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)  # noise: a JPEG that decodes like a busy photo
    Image.fromarray(np.tile(tile, (12, 16, 1))).save(tmp_path / "big.jpg", quality=90)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "predict", str(ingraph[name, resize_in_graph]),
                             str(tmp_path / "big.jpg"), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peak_mb = int(next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK"))) / 1024
    assert json.loads(result.stdout)  # an answer
    assert peak_mb < 300, peak_mb


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_split_readers_feed_a_graph_that_normalises_its_own_input(artifacts, ingraph, digits_root, name):
    """The tools that read a labelled split or a folder for an artifact (suggest-taxonomy's probabilities,
    Ray's decode stage) hand it what its placement takes, and it answers as the float path does."""
    from edge_cls.data import labelled_split
    from edge_cls.quality.taxonomy_suggest import artifact_probabilities
    from edge_cls.scale.ray_data import decode_batch

    split = labelled_split(digits_root, split="test")
    with load(artifacts[name]) as host, load(ingraph[name, False]) as graph:
        want, targets = artifact_probabilities(host, split)
        got, got_targets = artifact_probabilities(graph, split)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert np.array_equal(got_targets, targets)
        paths = np.array([str(p) for p in split.paths[:4]], dtype=object)
        decoded = decode_batch({"path": paths}, graph.manifest)
        assert decoded["tensor"].dtype == np.uint8 and not any(decoded["error"])
        np.testing.assert_array_equal(decoded["tensor"], np.stack([graph.preprocess(p) for p in paths]))
