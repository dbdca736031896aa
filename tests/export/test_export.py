"""Export round trips and the guarantees around them: metadata, parity, atomic artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_cls.artifact.manifest import load_manifest
from edge_cls.errors import ConfigError, ExportError
from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
from edge_cls.runtimes import load
from edge_cls.training.checkpoints import Checkpoint


@pytest.fixture(scope="module")
def student(tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    return checkpoint, checkpoint.build()


@pytest.fixture(scope="module")
def reference(student, test_images):
    checkpoint, model = student
    batch = np.stack([checkpoint.spec(p) for p in test_images])
    return ReferenceSet.from_model(model, batch)


def test_onnx_carries_spec_and_labels(artifacts, tiny_checkpoint):
    from edge_cls.export.onnx_export import METADATA_LABELS, METADATA_SPEC, read_metadata

    checkpoint = Checkpoint.load(tiny_checkpoint)
    for name in ("onnx-fp32", "onnx-int8"):
        metadata = read_metadata(artifacts[name] / "model.onnx")
        assert json.loads(metadata[METADATA_SPEC]) == checkpoint.spec.to_dict()
        assert json.loads(metadata[METADATA_LABELS]) == checkpoint.labels


def test_onnx_has_a_dynamic_batch_axis(artifacts):
    import onnx

    model = onnx.load(str(artifacts["onnx-fp32"] / "model.onnx"))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value


def test_openvino_ir_carries_spec_and_labels(artifacts, tiny_checkpoint):
    import openvino as ov

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = ov.Core().read_model(str(artifacts["openvino-int8"] / "model.xml"))
    assert json.loads(model.get_rt_info(["edge_cls", "labels"]).astype(str)) == checkpoint.labels
    assert json.loads(model.get_rt_info(["edge_cls", "preprocess"]).astype(str)) == checkpoint.spec.to_dict()


def test_manifests_record_parity_accuracy_and_tools(artifacts):
    for name, path in artifacts.items():
        manifest = load_manifest(path)
        assert manifest.parity["images"] == 60 and manifest.accuracy["images"] == 60
        assert {"torch", "onnx", "onnxruntime", "openvino", "nncf"} <= set(manifest.tools)
        if name.endswith("fp32"):
            assert manifest.parity["top1_agreement"] == 1.0 and manifest.parity["max_abs_logit_error"] < 1e-4
    assert load_manifest(artifacts["openvino-fp32"]).runtime_options == {"inference_precision": "f32"}
    assert load_manifest(artifacts["openvino-fp32"]).runtime_precision == "f32"


def test_int8_is_smaller_than_fp32(artifacts):
    from edge_cls.measure.latency import directory_size

    assert directory_size(artifacts["onnx-int8"]) < directory_size(artifacts["onnx-fp32"])
    assert directory_size(artifacts["openvino-int8"]) < directory_size(artifacts["openvino-fp32"])


@pytest.mark.slow
def test_fp16_targets(student, reference, tmp_path):
    checkpoint, model = student
    exported = export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path,
                                resolve_targets(["onnx", "openvino"], ["fp16"]), reference=reference,
                                onnx_exporter="torchscript")
    scale = float(np.abs(reference.logits).max())
    for artifact in exported:
        parity = artifact.manifest.parity
        # half-precision rounding (f16 weights, or bf16 compute) moves logits by ~1%, not more
        assert parity["max_abs_logit_error"] <= 0.03 * scale, (artifact.target.name, parity)
        assert parity["disagreements"] <= 1, (artifact.target.name, parity)
        with load(artifact.path) as clf:
            [top] = clf.predict(np.zeros((40, 40, 3), np.uint8), k=1)
            assert top.label in checkpoint.labels and 0 < top.score <= 1


def test_fp32_disagreement_fails_and_keeps_the_previous_artifact(student, reference, artifacts, tmp_path):
    import shutil

    checkpoint, model = student
    target = tmp_path / "onnx-fp32"
    shutil.copytree(artifacts["onnx-fp32"], target)
    before = (target / "manifest.json").read_text()
    wrong = ReferenceSet(reference.batch, -reference.logits)  # a reference the model cannot agree with
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(["onnx"], ["fp32"]),
                         reference=wrong, onnx_exporter="torchscript")
    assert (target / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-fp32"]  # no staging left behind
    load(target)  # still a valid artifact


def test_int8_without_calibration(student, reference, tmp_path):
    checkpoint, model = student
    with pytest.raises(ExportError, match="calibration"):
        export_artifacts(
            model,
            checkpoint.spec,
            checkpoint.labels,
            tmp_path,
            resolve_targets(["openvino"], ["int8"]),
            reference=reference,
        )


def test_unknown_exporter(student, reference, tmp_path):
    checkpoint, model = student
    with pytest.raises(ExportError, match="unknown ONNX exporter"):
        export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(["onnx"], ["fp32"]),
                         reference=reference, onnx_exporter="magic")


def test_missing_export_library_says_how_to_install(monkeypatch):
    import importlib.util

    from edge_cls.errors import BackendUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    resolve_targets(["openvino"], ["fp32"])  # NNCF is only needed for INT8
    with pytest.raises(BackendUnavailableError, match=r"needs nncf: pip install 'edge-cls\[export\]'"):
        resolve_targets(["openvino"], ["int8"])


def test_export_table_validates_first():
    assert [t.name for t in resolve_targets(["onnx", "openvino"], ["fp32", "int8"])] == [
        "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    with pytest.raises(ConfigError, match="unknown export format"):
        resolve_targets(["tflite"], ["fp32"])
    with pytest.raises(ConfigError, match="supports"):
        resolve_targets(["onnx"], ["int4"])
    with pytest.raises(ConfigError):
        resolve_targets([], ["fp32"])


@pytest.mark.slow
def test_auto_ships_one_measured_artifact_per_backend(student, digits_root, tmp_path, quick_search):
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split

    checkpoint, model = student
    splits = load_splits(digits_root)
    batch, targets = preprocess_split(splits["val"], checkpoint.spec)
    exported = export_artifacts(
        model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(["onnx", "openvino"], ["auto"]),
        reference=ReferenceSet.from_model(model, batch, targets, name="val"),
        calibration=CalibrationSet.from_split(splits["train"], checkpoint.spec, size=32), onnx_exporter="torchscript",
        search=quick_search(),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "openvino"]  # no staging left behind
    for artifact in exported:
        manifest = load_manifest(artifact.path)
        search = manifest.search
        rows = {row["recipe"]: row for row in search["candidates"]}
        shipped = [row for row in rows.values() if row["verdict"] == "shipped"]
        assert len(shipped) == 1 and shipped[0]["recipe"] == manifest.recipe
        fp32 = next(row for row in rows.values() if row["precision"] == "fp32")
        if manifest.precision != "fp32":  # a low-precision artifact ships only if it keeps the answer and is faster
            assert shipped[0]["drop_high"] <= 0.3  # the rule: the upper end of its interval within the bar
            assert shipped[0]["p50_ms"] <= 0.95 * fp32["p50_ms"]
        assert manifest.accuracy["split"] == "val" and manifest.parity["images"] == len(batch)
        assert not manifest.accepted_drop


def test_split_folder_keeps_calibration_and_check_images_apart(digits_root):
    from edge_cls.calibration_data import split_folder

    split = split_folder(digits_root / "train", [str(i) for i in range(10)], calibration_size=100, check_size=50)
    assert not set(split.calibration) & set(split.check)
    assert len(split.check) == 50 and len(split.calibration) == 100
    assert sorted(set(split.check_targets.tolist())) == list(range(10))  # stratified: every class is checked
    classes = [p.parent.name for p in split.check]
    assert [int(c) for c in classes] == split.check_targets.tolist()
    unlabelled = split_folder(digits_root / "train", ["a", "b"], calibration_size=10, check_size=5)
    assert unlabelled.check_targets is None  # sub-directories are not the model's labels: agreement only


@pytest.mark.slow
def test_a_graph_onnxslim_would_break_is_kept_as_exported(tmp_path, caplog):
    """onnxslim mis-folds the dynamic TF "same" padding of timm's tf_* models (TorchScript exporter,
    odd feature-map sizes): the export must notice and keep the unslimmed graph."""
    import onnxruntime as ort
    import torch

    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    torch.manual_seed(0)
    model = create_model(ModelRecipe(name="tf_efficientnet_lite0", num_classes=10)).eval()
    spec = spec_for_model(model, input_size=40)  # 40 -> 20 -> 10 -> 5 -> 3: odd sizes
    path = export_onnx(model, spec, [str(i) for i in range(10)], tmp_path / "m.onnx", exporter="torchscript")
    batch = np.random.default_rng(1).standard_normal((3, *spec.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert "onnxslim changed what the graph computes" in caplog.text


def test_work_left_by_a_killed_export_is_removed_and_nothing_else(student, reference, tmp_path):
    import subprocess

    checkpoint, model = student
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    abandoned = tmp_path / ".edge-cls-export-old"
    abandoned.mkdir()
    (abandoned / "owner.pid").write_text(str(gone.pid))
    live = tmp_path / ".edge-cls-export-live"
    live.mkdir()
    (live / "owner.pid").write_text(str(__import__("os").getpid()))
    unknown = tmp_path / ".edge-cls-export-unknown"
    unknown.mkdir()
    export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path, resolve_targets(["onnx"], ["fp32"]),
                     reference=reference, onnx_exporter="torchscript")
    assert not abandoned.exists() and live.exists() and unknown.exists()
    assert (tmp_path / "onnx-fp32" / "manifest.json").is_file()


@pytest.mark.slow
def test_calibration_runs_in_fixed_chunks_with_the_one_pass_ranges(student, digits_root, tmp_path, monkeypatch):
    """ORT calibrates a few images at a time to bound memory: always the same chunk size (the last
    one shorter), and min-max ranges as if all images went through at once."""
    import onnx

    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.export import onnxruntime_export
    from edge_cls.export.onnx_export import export_onnx

    checkpoint, model = student
    fp32 = export_onnx(model, checkpoint.spec, checkpoint.labels, tmp_path / "model.onnx")
    calibration = CalibrationSet(sorted((digits_root / "val").rglob("*.png"))[:12], checkpoint.spec)
    assert len(calibration.array) == 12
    chunks = []
    real_reader = onnxruntime_export._reader

    def recording_reader(*args, **kwargs):
        reader = real_reader(*args, **kwargs)
        set_range = reader.set_range

        def recorded(start_index, end_index):
            set_range(start_index, end_index)
            chunks.append(len([None for _ in iter(reader.get_next, None)]))
            set_range(start_index, end_index)

        reader.set_range = recorded
        return reader

    def scales(path):
        graph = onnx.load(path).graph
        return {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_scale")}

    monkeypatch.setattr(onnxruntime_export, "_reader", recording_reader)
    monkeypatch.setattr(onnxruntime_export, "CALIBRATION_STRIDE", 5)
    chunked = onnxruntime_export.quantize_onnx_int8(fp32, tmp_path / "chunked.onnx", calibration)
    assert chunks == [5, 5, 2]
    chunks.clear()
    monkeypatch.setattr(onnxruntime_export, "CALIBRATION_STRIDE", 16)
    whole = onnxruntime_export.quantize_onnx_int8(fp32, tmp_path / "whole.onnx", calibration)
    assert chunks == [12]
    chunked_scales, whole_scales = scales(chunked), scales(whole)
    assert chunked_scales and chunked_scales.keys() == whole_scales.keys()
    for name, scale in whole_scales.items():
        np.testing.assert_array_equal(chunked_scales[name], scale, err_msg=name)
