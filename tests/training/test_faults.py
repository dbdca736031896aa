"""A real training process killed with SIGKILL resumes to the result of an uninterrupted run."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from edge_cls.training.checkpoints import Checkpoint

EPOCHS = 3


@pytest.fixture
def mini_digits(digits_root, tmp_path):
    """8 train, 3 val and 3 test images per class: an epoch is five steps of 16."""
    root = tmp_path / "mini"
    for split, count in {"train": 8, "val": 3, "test": 3}.items():
        for class_dir in sorted((digits_root / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                shutil.copy(path, root / split / class_dir.name / path.name)
    return root


def command(data, output, *extra):
    return [sys.executable, "-m", "edge_cls", "finetune-teacher", "--model", "test_vit", "--data-dir", str(data),
            "--img-size", "32", "--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "1e-3", "--output", str(output),
            *extra]


def run_to_the_end(args, log):
    with open(log, "w") as stderr:
        result = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=stderr, timeout=600)
    assert result.returncode == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_where_an_uninterrupted_run_ends(mini_digits, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_to_the_end(command(mini_digits, whole), tmp_path / "whole.log")

    state = killed / "runs" / "teacher" / "last.pt"
    with open(tmp_path / "killed.log", "w") as stderr:
        process = subprocess.Popen(command(mini_digits, killed), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 600
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a power cut would
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert state.exists() and not (killed / "checkpoints" / "teacher.pt").exists()

    run_to_the_end(command(mini_digits, killed, "--resume"), tmp_path / "resumed.log")
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    a = Checkpoint.load(whole / "checkpoints" / "teacher.pt")
    b = Checkpoint.load(killed / "checkpoints" / "teacher.pt")
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, atol=1e-4, rtol=1e-4)
    for name in ("top1", "top5", "ece"):
        assert b.metrics["test"][name] == pytest.approx(a.metrics["test"][name], abs=1e-4)
    assert len(b.metrics["history"]) == EPOCHS
    for x, y in zip(a.metrics["history"], b.metrics["history"]):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4) and y["val_top1"] == pytest.approx(x["val_top1"])
    assert not state.exists()  # finished: the checkpoint is the record now
