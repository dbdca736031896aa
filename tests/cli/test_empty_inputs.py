"""Nothing to classify says so: every command that reads a folder of images, given a folder without
any (or with images only in sub-folders it was not asked to search), prints one line saying what it
looked for and what to do, and exits non-zero. Real subprocesses, real folders."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def nested(tmp_path, test_images):
    """A folder whose images sit only in a sub-folder."""
    folder = tmp_path / "nested"
    (folder / "2026" / "may").mkdir(parents=True)
    shutil.copy(test_images[0], folder / "2026" / "may" / "a.png")
    return folder


def test_predict_on_an_empty_folder(cli, one_line_error, artifacts, empty):
    result = cli("predict", artifacts["onnx-fp32"], empty, "--jsonl")
    one_line_error(result, f"{empty} holds no images (looked for .bmp")
    assert result.stdout == ""


def test_predict_on_a_folder_with_images_only_in_sub_folders(cli, one_line_error, artifacts, nested):
    one_line_error(cli("predict", artifacts["onnx-fp32"], nested),
                          f"{nested} holds no images itself, only in sub-folders: add --recursive")
    assert cli("predict", artifacts["onnx-fp32"], nested, "--recursive").returncode == 0


def test_check_on_an_empty_folder(cli, one_line_error, artifacts, empty):
    one_line_error(cli("check", artifacts["onnx-fp32"], "--images", empty), f"{empty} holds no images")


def test_bench_images_on_an_empty_folder(cli, one_line_error, artifacts, empty):
    result = cli("bench", artifacts["onnx-fp32"], "--images", empty, "--no-cold-start", "--no-benchmark-app")
    one_line_error(result, f"{empty} holds no images")


@pytest.mark.parametrize("flag", ["--calib-data", "--check-data"])
def test_export_with_an_empty_image_folder_fails_before_loading_the_model(cli, one_line_error, tiny_checkpoint, empty,
                                                                          tmp_path, flag):
    result = cli("export", "--checkpoint", tiny_checkpoint, "--formats", "onnx", "--precisions", "fp32", flag, empty,
                 "--output", tmp_path / "out")
    one_line_error(result, f"{flag} {empty} holds no images")
    assert "INFO" not in result.stderr and not (tmp_path / "out").exists()  # refused before any work
