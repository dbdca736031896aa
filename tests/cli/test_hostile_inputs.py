"""Hostile artifacts and directories through the real CLI: one line, non-zero (or a clean answer), nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "edge_cls.cli"]


def run(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, match):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("edge-cls: error:") and match in last, last


def edit_manifest(directory, change):
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_info_on_parity_and_accuracy_blocks_without_their_keys(artifact_copy):
    # Before: KeyError in `edge-cls info`, printed as an internal error.
    path = artifact_copy("onnx-fp32")
    edit_manifest(path, lambda d: d.update(parity={"images": 5}, accuracy={"note": "from another tool"}))
    result = run("info", path)
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement ? with ? on 5 ? images, max logit error ?" in result.stdout
    assert "accuracy:   top-1 ? on ? ? images" in result.stdout


def test_info_and_predict_on_malformed_manifests(artifact_copy, test_images):
    path = artifact_copy("onnx-fp32")
    edit_manifest(path, lambda d: d.update(labels=[["0"], *d["labels"][1:]]))  # before: TypeError
    assert_one_line_error(run("info", path), "'labels[0]' must be a string, got a list")
    assert_one_line_error(run("predict", path, test_images[0]), "'labels[0]' must be a string")
    edit_manifest(path, lambda d: d.update(labels=[str(i) for i in range(10)]) or d["preprocess"].update(mean="abc"))
    assert_one_line_error(run("info", path), "'preprocess.mean' must be a list, got a string")  # before: ValueError
    (path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # before: RecursionError
    assert_one_line_error(run("info", path), "nested too deeply")


def test_predict_refuses_a_symlinked_model_and_an_unlisted_file(artifact_copy, test_images, tmp_path):
    path = artifact_copy("openvino-fp32")
    (path / "model.bin").rename(tmp_path / "weights.bin")
    (path / "model.bin").symlink_to(tmp_path / "weights.bin")
    assert_one_line_error(run("predict", path, test_images[0]), "model.bin is a symbolic link")
    (path / "model.bin").unlink()
    (tmp_path / "weights.bin").rename(path / "model.bin")
    assert run("predict", path, test_images[0]).returncode == 0
    (path / "notes.txt").write_text("hello")
    assert_one_line_error(run("predict", path, test_images[0]), "notes.txt is not listed in the manifest")


@pytest.mark.slow
def test_build_never_deletes_a_data_directory_it_did_not_write(tmp_path):
    # Before: `edge-cls build --output DIR` without --data-dir replaced DIR/data with the demo set.
    out = tmp_path / "project"
    mine = out / "data" / "train" / "cat" / "tom.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"not a demo digit")
    for command in ("build", "distill"):
        result = run(command, "--output", out, "--epochs", "1")
        assert_one_line_error(result, "pass --data-dir")
        assert mine.read_bytes() == b"not a demo digit"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train"]
