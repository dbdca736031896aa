"""Multi-process training on CPU: torchrun, 2 processes, gloo; compared with 1 process."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edge_cls.training.distributed import EpochSampler


def test_epoch_sampler_shards_cover_the_data_once_per_epoch():
    shards = [list(EpochSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))
    again = EpochSampler(10, seed=3, rank=0, world_size=2)
    assert list(again) == shards[0]
    again.set_epoch(1)
    assert list(again) != shards[0]  # a new order each epoch
    padded = [list(EpochSampler(5, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 3 and set(padded[0] + padded[1]) == set(range(5))


def test_weighted_epoch_sampler_draws_classes_evenly():
    weights = np.array([1.0] * 90 + [9.0] * 10)  # 90 images of one class, 10 of another, balanced weights
    drawn = np.array(
        list(EpochSampler(100, seed=0, weights=weights * 100)) + list(EpochSampler(100, seed=1, weights=weights))
    )
    assert 0.35 < (drawn >= 90).mean() < 0.65


def _distill(nproc, out, digits_root, batch):
    args = [
        "distill",
        "--data",
        digits_root,
        "--out",
        out,
        "--teacher",
        "test_vit",
        "--student",
        "test_efficientnet",
        "--input-size",
        "32",
        "--teacher-epochs",
        "1",
        "--student-epochs",
        "2",
        "--batch-size",
        batch,
        "--lr",
        "0.005",
        "--no-compare-alone",
        "--device",
        "cpu",
    ]
    if nproc > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "edge_cls",
        ]
    else:
        command = [sys.executable, "-m", "edge_cls"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    with open(out / "runs" / "student" / "metrics.csv") as f:
        return result, list(csv.DictReader(f))


@pytest.mark.slow
def test_two_process_ddp_agrees_with_one_process(digits_root, tmp_path):
    one, rows_one = _distill(1, tmp_path / "one", digits_root, 32)
    two, rows_two = _distill(2, tmp_path / "two", digits_root, 16)  # 2 x 16 = the same global batch
    assert "rank 1 of 2 (gloo)" in two.stderr

    # The same schedule: as many optimizer steps per epoch, so the same learning rates.
    assert [r["lr"] for r in rows_two] == [r["lr"] for r in rows_one]
    assert len(rows_two) == 2 and all(np.isfinite(float(r["loss"])) for r in rows_two)

    # The validation metric is reduced over both ranks' shards; it must equal what one process
    # measures for the model rank 0 saved - true only if both ranks hold the same weights and buffers.
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.models import predict_logits

    checkpoint = Checkpoint.load(tmp_path / "two" / "checkpoints" / "student.pt")
    batch, targets = preprocess_split(load_splits(digits_root)["val"], checkpoint.spec)
    top1 = float((predict_logits(checkpoint.build(), batch).argmax(1) == targets).mean())
    assert float(rows_two[-1]["val_top1"]) == pytest.approx(top1, abs=1e-9)

    # Only rank 0 writes: one event file, one evaluation.
    assert len(list((tmp_path / "two" / "runs" / "student" / "tensorboard").iterdir())) == 1
    evaluation = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    assert [e["name"].split(" ")[0] for e in evaluation] == ["teacher", "student"]
