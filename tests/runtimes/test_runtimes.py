"""One conformance suite, run against every backend and precision (fsspec-style)."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ArtifactError, BackendUnavailableError, ConfigError, InvalidImageError
from edge_cls.runtimes import available_backends, backend_class, load


class RuntimeConformance:
    """What every artifact must do through the public runtime API. Subclasses set ``name``."""

    name: str
    fp32: bool = True

    @pytest.fixture
    def classifier(self, artifacts):
        with load(artifacts[self.name]) as clf:
            yield clf

    def test_predict_one_image_matches_pytorch_top5(self, classifier, pytorch_logits, test_images):
        reference = pytorch_logits(test_images)
        agree = 0
        for image, logits in zip(test_images, reference):
            preds = classifier.predict(image, k=5)
            assert len(preds) == 5 and all(0.0 <= p.score <= 1.0 for p in preds)
            assert preds[0].label == classifier.labels[preds[0].index]
            if self.fp32:
                assert [p.index for p in preds] == list(np.argsort(-logits, kind="stable")[:5])
            agree += preds[0].index == int(np.argmax(logits))
        assert agree >= (len(test_images) if self.fp32 else len(test_images) - 2)

    def test_logits_close_to_pytorch(self, classifier, pytorch_logits, test_images):
        reference = pytorch_logits(test_images)
        batch = np.stack([classifier.spec(p) for p in test_images])
        logits = classifier.logits(batch)
        assert logits.shape == reference.shape and logits.dtype == np.float32
        tolerance = 1e-4 if self.fp32 else 0.5 * np.abs(reference).max()
        assert np.abs(logits - reference).max() <= tolerance

    def test_list_input_and_dynamic_batch(self, classifier, test_images):
        one = [classifier.predict(p, k=3) for p in test_images[:5]]
        many = classifier.predict(test_images[:5], k=3)
        assert [[p.index for p in r] for r in many] == [[p.index for p in r] for r in one]
        assert classifier.predict([], k=3) == []

    def test_every_input_kind(self, classifier, test_images):
        path = test_images[0]
        expected = [p.index for p in classifier.predict(path, k=3)]
        image = Image.open(path)
        for source in (str(path), path.read_bytes(), image, np.asarray(image.convert("RGB"))):
            assert [p.index for p in classifier.predict(source, k=3)] == expected

    def test_batch_survives_bad_items(self, classifier, test_images, tmp_path):
        broken = tmp_path / "broken.png"
        buffer = io.BytesIO()
        Image.open(test_images[0]).save(buffer, format="PNG")
        broken.write_bytes(buffer.getvalue()[:40])
        items = [test_images[0], broken, tmp_path / "missing.jpg", test_images[1]]
        results = classifier.predict_batch(items, k=2, batch_size=2)
        assert [r.ok for r in results] == [True, False, False, True]
        assert isinstance(results[1].error, InvalidImageError) and "broken.png" in str(results[1].error)
        assert len(results[3].predictions) == 2
        with pytest.raises(InvalidImageError):
            classifier.predict(broken)

    def test_wrong_batch_shape_is_a_config_error(self, classifier):
        with pytest.raises(ConfigError, match="float32 batch"):
            classifier.logits(np.zeros((1, 3, 7, 7), np.float32))
        with pytest.raises(ConfigError):
            classifier.logits(np.zeros((1, *classifier.spec.input_shape), np.float64))

    def test_reports_the_precision_that_ran(self, classifier):
        assert classifier.precision
        assert classifier.precision == classifier.manifest.runtime_precision
        if self.fp32:
            assert classifier.precision == "f32"


class TestOnnxRuntimeFP32(RuntimeConformance):
    name = "onnx-fp32"


class TestOnnxRuntimeINT8(RuntimeConformance):
    name = "onnx-int8"
    fp32 = False


class TestOpenVINOFP32(RuntimeConformance):
    name = "openvino-fp32"


class TestOpenVINOINT8(RuntimeConformance):
    name = "openvino-int8"
    fp32 = False


class TestTensorRTFP16(RuntimeConformance):
    """Skipped, with the reason, where TensorRT cannot run (the ``tensorrt_artifact`` fixture says why)."""

    name = "tensorrt-fp16"
    fp32 = False

    @pytest.fixture
    def classifier(self, tensorrt_artifact):
        with load(tensorrt_artifact) as clf:
            yield clf


def test_openvino_fp32_hint_is_what_keeps_f32_on_bf16_cpus(artifacts):
    """Asking for bf16 really runs bf16 here, so the f32 that FP32 artifacts report is the hint's doing."""
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support, so OpenVINO runs f32 whatever the hint")
    with load(artifacts["openvino-fp32"], inference_precision="bf16") as clf:
        assert clf.precision == "bf16"
    with load(artifacts["openvino-fp32"]) as clf:
        assert clf.precision == "f32"


def test_onnx_artifact_runs_on_openvino_too(artifacts, test_images):
    with (
        load(artifacts["onnx-fp32"]) as ort,
        load(artifacts["onnx-fp32"], backend="openvino", inference_precision="f32") as ov,
    ):
        batch = np.stack([ort.spec(p) for p in test_images])
        np.testing.assert_allclose(ort.logits(batch), ov.logits(batch), atol=1e-4)


def test_backend_that_cannot_read_the_file(artifacts):
    with pytest.raises(ConfigError, match="cannot read model.xml"):
        load(artifacts["openvino-fp32"], backend="onnxruntime")


def test_unknown_backend_and_options(artifacts):
    with pytest.raises(ConfigError, match="unknown backend"):
        load(artifacts["onnx-fp32"], backend="coreml")
    with pytest.raises(ConfigError, match="unknown onnxruntime options"):
        load(artifacts["onnx-fp32"], device="GPU")


def test_onnxruntime_without_spinning_gives_the_same_answers(artifacts, test_images):
    """The ORT-specific spelling of the throughput wish keeps working."""
    with load(artifacts["onnx-fp32"]) as default, load(artifacts["onnx-fp32"], spin=False) as quiet:
        config = quiet.backend._session.get_session_options().get_session_config_entry
        assert config("session.intra_op.allow_spinning") == "0"
        batch = np.stack([default.preprocess(p) for p in test_images])
        np.testing.assert_array_equal(quiet.logits(batch), default.logits(batch))


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_throughput_mode_is_one_wish_mapped_by_each_backend(artifacts, test_images, name):
    """``load(..., throughput=True)``: ONNX Runtime stops spinning, OpenVINO compiles for throughput
    (streams); the answers stay the same, and options given explicitly win."""
    with load(artifacts[name]) as latency, load(artifacts[name], throughput=True) as stream:
        backend = stream.backend
        if backend.name == latency.backend.name == "onnxruntime":
            config = backend._session.get_session_options().get_session_config_entry
            assert config("session.intra_op.allow_spinning") == "0"
        else:
            assert str(backend._compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
            assert backend.concurrency >= 1
        batch = np.stack([latency.preprocess(p) for p in test_images])
        np.testing.assert_allclose(stream.logits(batch), latency.logits(batch), rtol=1e-5, atol=1e-5)
        results = stream.predict_batch(test_images, k=1, workers=2)
        assert [r.predictions[0].index for r in results] == list(latency.logits(batch).argmax(1))
    explicit = {"spin": True} if name.startswith("onnx") else {"performance_hint": "LATENCY"}
    with load(artifacts[name], throughput=True, **explicit) as clf:
        assert clf.backend.concurrency == 1


def test_tampered_model_file_is_refused(artifact_copy):
    path = artifact_copy("onnx-fp32")
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load(path)


def test_missing_backend_library_says_how_to_install(monkeypatch):

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-cls\[openvino\]'"):
        backend_class("openvino")
    assert "openvino" not in available_backends()


@pytest.mark.parametrize("name", ["onnx-int8", "openvino-int8"])
def test_classifying_imports_no_torch_timm_or_other_backend(artifacts, test_images, name):
    """An edge app classifies with one runtime installed: nothing on the path imports torch."""
    other = "openvino" if name.startswith("onnx") else "onnxruntime"
    script = textwrap.dedent(f"""
        import sys
        from edge_cls.runtimes import load
        clf = load({str(artifacts[name])!r})
        print(clf.predict({str(test_images[0])!r}, k=1)[0].label)
        heavy = sorted(m for m in ("torch", "timm", "nncf", "onnx", {other!r}) if m in sys.modules)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
