"""The CLI as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "edge_cls.cli"]


def run(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, match):
    """Exit non-zero, no traceback, and the error is one line (log records of the work done before
    the error may precede it)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    logged = ("DEBUG ", "INFO ", "WARNING ")
    assert lines and all(line.startswith(logged) for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("edge-cls: error:"), result.stderr
    assert match in lines[-1], lines[-1]


def test_help_is_fast_and_light():
    script = ("import sys; from edge_cls.cli import build_parser; build_parser(); "
              "print(sorted(m for m in ('torch', 'timm', 'onnx', 'openvino') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
    assert run("--help").returncode == 0


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32", "onnx-int8", "openvino-int8"])
def test_predict_json_matches_pytorch_top5(artifacts, test_images, pytorch_logits, name):
    result = run("predict", artifacts[name], *test_images, "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    reference = pytorch_logits(test_images)
    assert [Path(item["image"]) for item in output] == test_images
    top1_agree = 0
    for item, logits in zip(output, reference):
        indices = [p["index"] for p in item["predictions"]]
        assert len(indices) == 5 and all(
            isinstance(p["label"], str) and 0 <= p["score"] <= 1 for p in item["predictions"]
        )
        if name.endswith("fp32"):
            assert indices == list(np.argsort(-logits, kind="stable")[:5])
        top1_agree += indices[0] == int(np.argmax(logits))
    assert top1_agree >= len(test_images) - (0 if name.endswith("fp32") else 2)


def test_predict_text_output(artifacts, test_images):
    result = run("predict", artifacts["onnx-fp32"], test_images[0], "-k", "2")
    assert result.returncode == 0 and result.stdout.startswith(str(test_images[0]))


def test_info(artifacts):
    result = run("info", artifacts["openvino-fp32"])
    assert result.returncode == 0, result.stderr
    assert "openvino, fp32 (ran as f32)" in result.stdout and "top-1 agreement 100.0%" in result.stdout
    data = json.loads(run("info", artifacts["onnx-int8"], "--json").stdout)
    assert data["precision"] == "int8" and data["schema_version"] == 1


@pytest.mark.slow
def test_bench_with_accuracy(artifacts, digits_root):
    result = run(
        "bench",
        artifacts["onnx-fp32"],
        artifacts["openvino-int8"],
        "--iterations",
        "5",
        "--data",
        digits_root / "test",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "int8"]
    assert all(r["p50_ms"] > 0 and r["throughput_ips"] > 0 and r["images"] == 60 and 0 <= r["top1"] <= 1 for r in rows)


def test_predict_missing_image(artifacts, tmp_path):
    assert_one_line_error(run("predict", artifacts["onnx-fp32"], tmp_path / "nope.jpg"), "does not exist")


def test_predict_truncated_image(artifacts, test_images, tmp_path):
    cut = tmp_path / "cut.png"
    cut.write_bytes(test_images[0].read_bytes()[:50])
    result = run("predict", artifacts["onnx-fp32"], test_images[0], cut, "--json")
    assert result.returncode == 1
    assert_one_line_error(result, "cut.png")
    output = json.loads(result.stdout)
    assert output[0]["predictions"] and "error" in output[1]  # the good image is still answered


def test_predict_on_a_directory_that_is_not_an_artifact(tmp_path, test_images):
    assert_one_line_error(run("predict", tmp_path, test_images[0]), "is not an artifact")


def test_missing_artifact(tmp_path, test_images):
    assert_one_line_error(run("info", tmp_path / "gone"), "does not exist")


def test_tampered_model_file(artifact_copy, test_images):
    path = artifact_copy("openvino-fp32")
    weights = path / "model.bin"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    assert_one_line_error(run("predict", path, test_images[0]), "sha256")


def test_export_rejects_bad_arguments_before_work(tmp_path):
    assert_one_line_error(
        run("export", "--model", "test_efficientnet", "--num-classes", "3", "--formats", "coreml", "--out", tmp_path),
        "unknown export format",
    )
    assert_one_line_error(
        run("export", "--model", "test_efficientnet", "--num-classes", "3", "--precisions", "int4", "--out", tmp_path),
        "cannot export 'int4'",
    )
    assert_one_line_error(
        run("export", "--model", "test_efficientnet", "--num-classes", "3", "--precisions", "int8", "--out", tmp_path),
        "needs --calib",
    )
    assert_one_line_error(
        run("export", "--model", "test_efficientnet", "--num-classes", "3", "--out", tmp_path), "give --calib-data"
    )


@pytest.mark.slow
def test_export_weights_that_do_not_fit(tmp_path, tiny_checkpoint, digits_root):
    result = run("export", "--model", "test_efficientnet", "--weights", tiny_checkpoint, "--num-classes", "5",
                 "--calib", digits_root / "val", "--formats", "onnx", "--precisions", "fp32", "--out", tmp_path)
    assert_one_line_error(result, "shape mismatch")


@pytest.mark.slow
def test_export_from_plain_state_dict_then_predict(tmp_path, digits_root, test_images):
    import torch

    from edge_cls.training.models import ModelRecipe, create_model

    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)))
    out = tmp_path / "out"
    result = run(
        "export",
        "--model",
        "test_efficientnet",
        "--weights",
        weights,
        "--labels",
        labels,
        "--input-size",
        "32",
        "--calib",
        digits_root / "val",
        "--calibration-size",
        "20",
        "--formats",
        "onnx",
        "openvino",
        "--precisions",
        "fp32",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["onnx-fp32", "openvino-fp32"]
    predicted = json.loads(run("predict", out / "openvino-fp32", test_images[0], "--json").stdout)
    assert predicted[0]["predictions"][0]["label"].startswith("digit ")


@pytest.mark.slow
def test_build_end_to_end_on_a_folder(tmp_path, digits_root):
    """The whole pipeline, tiny: teacher, student alone, distilled student, one auto artifact per
    backend with its precision search, report."""
    out = tmp_path / "build"
    result = run("build", "--data", digits_root, "--teacher", "test_vit", "--student", "test_efficientnet",
                 "--input-size", "32", "--teacher-epochs", "1", "--student-epochs", "1", "--calibration-size", "16",
                 "--bench-iterations", "5", "--qad-seconds", "5", "--out", out, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "artifacts").iterdir()) == ["onnx", "openvino"]
    report = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names[:3] == ["teacher test_vit", "student alone test_efficientnet", "student KD test_efficientnet"]
    assert len(names) == 5 and (out / "report.md").is_file() and (out / "accuracy_latency.png").stat().st_size > 1000
    for backend in ("onnx", "openvino"):
        search = report["search"][backend]
        assert search["requested"] == "auto" and search["check"]["split"] == "val"
        recipes = [row["recipe"] for row in search["candidates"]]
        assert recipes[0] in ("ort-fp32", "ov-fp32") and any(r["precision"] == "int8" for r in search["candidates"])
        assert sum(row["verdict"] == "shipped" for row in search["candidates"]) == 1
        distilled = [row for row in search["candidates"] if row["recipe"].endswith("-qad")]
        assert distilled and distilled[0].get("qad_steps", 0) > 0, distilled  # the build always distils, bounded
    assert "## Precision search" in (out / "report.md").read_text()
    for stage in ("data", "teacher", "student_alone", "distill", "export", "benchmark"):
        assert stage in report["stage_seconds"]
    assert "student KD onnx " in result.stdout and "student KD openvino " in result.stdout


@pytest.mark.slow
def test_train_writes_a_checkpoint_usable_as_teacher_weights(tmp_path, digits_root):
    out = tmp_path / "teacher.pt"
    result = run(
        "train", "--model", "test_vit", "--data", digits_root, "--input-size", "32", "--epochs", "1", "--out", out
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test top-1" in result.stdout

    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.models import create_model

    checkpoint = Checkpoint.load(out)
    assert checkpoint.recipe.kwargs == {"img_size": 32} and checkpoint.metrics["train_config"]["epochs"] == 1
    create_model(checkpoint.recipe, weights=out)  # loads as --teacher-weights would


@pytest.mark.slow
def test_distill_reads_a_config_file_and_flags_override_it(tmp_path, digits_root):
    config = tmp_path / "distill.yaml"
    config.write_text(
        f"data_dir: {digits_root}\nteacher: test_vit\nstudent: test_efficientnet\ninput_size: 32\n"
        "compare_alone: false\nteacher_train:\n  epochs: 1\n  batch_size: 32\n"
        "student_train:\n  epochs: 3\n  batch_size: 32\n  ema_decay: 0.9\n"
        "distill:\n  kind: hard\n"
    )
    out = tmp_path / "d"
    result = run("distill", "--config", config, "--student-epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| top1 |" in result.stdout and "student:" in result.stdout
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["student_train"]["epochs"] == 1  # the flag won
    assert resolved["student_train"]["ema_decay"] == 0.9 and resolved["distill"]["kind"] == "hard"  # the file's
    assert resolved["teacher"] == "test_vit" and resolved["out_dir"] == str(out)
    assert (out / "checkpoints" / "student.pt").is_file()


@pytest.mark.slow
def test_distill_bad_inputs_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    for split in ("train", "val", "test"):
        (empty / split / "cat").mkdir(parents=True)
    assert_one_line_error(run("distill", "--data", empty, "--out", tmp_path / "o"), "has no images")
    bad = tmp_path / "bad.yaml"
    bad.write_text("studnet: resnet50\n")
    assert_one_line_error(run("distill", "--config", bad), "unknown option(s) studnet")
    assert_one_line_error(run("distill", "--config", tmp_path / "none.yaml"), "does not exist")


@pytest.mark.slow
def test_finetune_teacher_from_a_hub_style_weights_file_head_only(tmp_path, digits_root):
    import torch
    from safetensors.torch import save_file

    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.models import ModelRecipe, create_model

    hub_like = create_model(ModelRecipe(name="test_vit", num_classes=1000, kwargs={"img_size": 32}))
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hub_like.state_dict().items()}, str(weights))
    out = tmp_path / "teacher.pt"
    result = run("finetune-teacher", "--model", "test_vit", "--weights", weights, "--head-only", "--data", digits_root,
                 "--input-size", "32", "--epochs", "1", "--batch-size", "32", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = Checkpoint.load(out).state_dict
    torch.testing.assert_close(trained["blocks.0.attn.qkv.weight"], hub_like.state_dict()["blocks.0.attn.qkv.weight"])
    assert trained["head.weight"].shape == (10, hub_like.embed_dim)


@pytest.mark.slow
def test_finetune_teacher_bad_weights_and_truncated_resume(tmp_path, digits_root):
    import torch

    from edge_cls.training.models import ModelRecipe, create_model

    wrong = tmp_path / "wrong.pth"
    torch.save(create_model(ModelRecipe(name="test_efficientnet", num_classes=10)).state_dict(), wrong)
    common = ["--model", "test_vit", "--data", digits_root, "--input-size", "32", "--epochs", "2", "--batch-size", "32"]
    assert_one_line_error(run("finetune-teacher", *common, "--weights", wrong, "--out", tmp_path / "t.pt"),
                          "keys missing from the file")
    state_dir = tmp_path / "t_run"
    state_dir.mkdir(exist_ok=True)
    (state_dir / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(run("finetune-teacher", *common, "--resume", "--out", tmp_path / "t.pt"),
                          "unreadable or truncated")
    assert (state_dir / "last.pt").read_bytes() == b"PK\x03\x04 truncated"
    assert not (tmp_path / "t.pt").exists()


@pytest.fixture(scope="module")
def unlabelled_images(digits_root, tmp_path_factory):
    """Test digits in one flat folder: no labels, so the bar is agreement with PyTorch (>= 99.5%)."""
    import shutil

    folder = tmp_path_factory.mktemp("flat")
    for path in sorted((digits_root / "test").rglob("*.png")):
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    return folder


@pytest.fixture(scope="module")
def gray_images(tmp_path_factory):
    """Four flat grey frames: calibrating on them gives INT8 ranges that fit no real digit."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("gray")
    for level in (0, 40, 80, 120):
        Image.new("L", (28, 28), level).save(folder / f"gray{level}.png")
    return folder


@pytest.mark.slow
def test_explicit_int8_that_misses_the_bar_fails_in_one_line(tiny_checkpoint, gray_images, unlabelled_images, tmp_path):
    out = tmp_path / "out"
    common = ["export", "--checkpoint", tiny_checkpoint, "--calib-data", gray_images, "--check-data", unlabelled_images,
              "--formats", "onnx", "--precisions", "int8", "--output", out,
              "--recipes", "ort-qdq-u8s8", "ort-qdq-u8s8-bc"]  # one plain, one restoring: the suite's time
    result = run(*common)
    assert_one_line_error(result, "no int8 recipe meets the rule (expected top-1 drop <= 0.3 pts")
    assert "--accept-drop" in result.stderr
    assert not (out / "onnx-int8").exists()

    accepted = run(*common, "--accept-drop")
    assert accepted.returncode == 0, accepted.stderr
    assert "[ACCEPTED DROP]" in accepted.stdout
    manifest = json.loads((out / "onnx-int8" / "manifest.json").read_text())
    assert manifest["accepted_drop"] is True and manifest["search"]["accepted_drop"] is True
    info = run("info", out / "onnx-int8")
    assert "missed the accuracy bar" in info.stdout and "search:" in info.stdout


@pytest.mark.slow
def test_check_data_must_not_overlap_calibration(tiny_checkpoint, digits_root, tmp_path):
    result = run("export", "--checkpoint", tiny_checkpoint, "--calib-data", digits_root / "train",
                 "--check-data", digits_root / "train" / "3", "--precisions", "int8", "--output", tmp_path / "o")
    assert_one_line_error(result, "must not be checked on the images it was calibrated on")
