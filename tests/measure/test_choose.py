"""The device decides: a candidate bundle made on the build host, chosen from by ``edge-cls choose`` in a
process that cannot import torch or timm; tampering refused; the same answer as ``auto`` here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_cls.artifact.bundle import BUNDLE_NAME, CHECK_FILE, decode_pixels, encode_pixels, read_bundle

pytestmark = pytest.mark.slow
RECIPES = ("ort-qdq-s8s8", "ort-fp16", "ov-nncf-mixed")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, digits_root, tmp_path_factory):
    """A bundle and, from the same checks, the artifacts ``auto`` ships on this machine."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.export.bundle_writer import export_bundle
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    splits = load_splits(digits_root)
    batch, targets = preprocess_split(splits["val"], checkpoint.spec)
    common = dict(reference=ReferenceSet.from_model(model, batch, targets, name="val"),
                  calibration=CalibrationSet.from_split(splits["train"], checkpoint.spec, size=32),
                  search=SearchSettings(only=RECIPES, rounds=5, block=10, restore="never", distill="never"))
    targets_ = resolve_targets(["onnx", "openvino"], ["auto"])
    out = tmp_path_factory.mktemp("bundle")
    bundle = export_bundle(model, checkpoint.spec, checkpoint.labels, out / "bundle", targets_, **common)
    auto = export_artifacts(model, checkpoint.spec, checkpoint.labels, out / "auto", targets_, **common)
    return bundle, {a.target.format.name: a.manifest for a in auto}


def choose_without_torch(bundle, output, *extra):
    """``edge-cls choose`` where importing torch or timm fails."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["timm"] = None
        from edge_cls.cli import main
        sys.exit(main(["choose", {str(bundle)!r}, "--output", {str(output)!r}, *{list(extra)!r}]))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)


def test_check_set_pixels_give_back_the_exact_tensors(test_images, tiny_checkpoint):
    from edge_cls.training.checkpoints import Checkpoint

    spec = Checkpoint.load(tiny_checkpoint).spec
    batch = np.stack([spec(p) for p in test_images])
    pixels = encode_pixels(batch, spec)
    assert pixels is not None and pixels.dtype == np.uint8
    assert np.array_equal(decode_pixels(pixels, spec), batch)
    assert encode_pixels(batch + 1e-3, spec) is None  # not a normalised image: stored as it is instead


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_choose_on_the_device_without_torch(exported, tmp_path, fmt):
    bundle, _ = exported
    result = choose_without_torch(bundle, tmp_path / "chosen", "--format", fmt)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "chosen" / "manifest.json").read_text())
    assert manifest["device"]["description"] and manifest["search"]["measured_on"]["speed"] == "this device"
    rows = manifest["search"]["candidates"]
    assert all(row["p50_ms"] for row in rows) and sum(row["verdict"] == "shipped" for row in rows) == 1
    from edge_cls.runtimes import load

    with load(tmp_path / "chosen") as clf:
        assert clf.manifest.device == manifest["device"]


def test_choose_here_gives_autos_answer_with_the_same_figures(exported, tmp_path):
    """On the build host the device's kernels are the build host's: the re-checked figures equal the
    export's, and the winner is auto's (FP32 here: S8S8 and FP16 are slower on x86 CPUs)."""
    bundle, auto = exported
    result = choose_without_torch(bundle, tmp_path / "chosen", "--format", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    chosen = json.loads((tmp_path / "chosen" / "manifest.json").read_text())
    assert chosen["recipe"] == auto["onnx"].recipe
    here = {r["recipe"]: r for r in chosen["search"]["candidates"]}
    there = {r["recipe"]: r for r in auto["onnx"].search["candidates"]}
    for recipe, row in here.items():
        assert row["flips"] == there[recipe]["flips"]
        assert row["expected_drop"] == pytest.approx(there[recipe]["expected_drop"], abs=1e-6)


@pytest.mark.parametrize("tamper", ["model", "check", "extra", "manifest"])
def test_a_tampered_bundle_is_refused_in_one_line(exported, tmp_path, tamper):
    bundle = shutil.copytree(exported[0], tmp_path / "bundle")
    first = read_bundle(bundle).candidates[0]
    if tamper == "model":
        model = bundle / first.directory / "model.onnx"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif tamper == "check":
        with open(bundle / CHECK_FILE, "ab") as f:
            f.write(b"\0")
    elif tamper == "extra":
        (bundle / "notes.txt").write_text("hi")
    else:
        data = json.loads((bundle / BUNDLE_NAME).read_text())
        data["rule"]["max_drop"] = 50.0
        (bundle / BUNDLE_NAME).write_text(json.dumps(data))
        # a rewritten bundle.json alone passes the hashes (as a manifest does): a key catches it
    result = choose_without_torch(bundle, tmp_path / "out", "--format", "onnx")
    if tamper == "manifest":
        assert result.returncode == 0
        return
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_tensorrt_bundle_carries_onnx_sources_for_the_device_to_build(tiny_checkpoint, digits_root, tmp_path):
    """Built where TensorRT cannot run: the bundle holds the FP32, FP16 and symmetric Q/DQ INT8 graphs,
    checked here with ONNX Runtime; choosing needs the device's TensorRT, and says so in one line."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, SearchSettings, resolve_targets
    from edge_cls.export.bundle_writer import export_bundle
    from edge_cls.runtimes import available_backends
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    splits = load_splits(digits_root)
    batch, targets = preprocess_split(splits["val"], checkpoint.spec)
    bundle = export_bundle(
        model, checkpoint.spec, checkpoint.labels, tmp_path / "bundle",
        resolve_targets(["tensorrt"], ["auto"], deferred=True),
        reference=ReferenceSet.from_model(model, batch, targets),
        calibration=CalibrationSet.from_split(splits["train"], checkpoint.spec, size=32),
        search=SearchSettings(accept_drop=True, restore="never", distill="never"))
    entries = {c.recipe: c for c in read_bundle(bundle).candidates}
    assert "trt-fp32" in entries and all(c.backend == "tensorrt" for c in entries.values())
    manifest = json.loads((bundle / entries["trt-fp32"].directory / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["model_file"] == "model.onnx"
    if "tensorrt" not in available_backends():
        result = choose_without_torch(bundle, tmp_path / "out")
        assert result.returncode == 1 and "runnable here: none" in result.stderr and "Traceback" not in result.stderr
