"""A checkpoint from elsewhere cannot steer timm.create_model into reading other files."""

import contextlib

import pytest
import torch

from edge_cls._fileio import DiskFullError
from edge_cls.errors import CheckpointError
from edge_cls.training.checkpoints import SAFE_MODEL_KWARGS, Checkpoint


@pytest.mark.parametrize("kwargs", [
    {"checkpoint_path": "/etc/passwd"},
    {"pretrained_cfg_overlay": {"file": "/tmp/elsewhere.bin"}},
    {"pretrained": True},
    {"img_size": 32, "features_only": True},
])
def test_model_arguments_outside_the_whitelist_are_refused(tiny_checkpoint, tmp_path, kwargs):
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    data["recipe"]["kwargs"] = kwargs
    hostile = tmp_path / "hostile.pt"
    torch.save(data, hostile)
    with pytest.raises(CheckpointError, match=r"model arguments \[.*\] are not accepted from a checkpoint"):
        Checkpoint.load(hostile)


def test_the_whitelisted_arguments_load(tiny_checkpoint, tmp_path):
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    data["recipe"]["kwargs"] = {"drop_rate": 0.1, "drop_path_rate": 0.0}
    fine = tmp_path / "fine.pt"
    torch.save(data, fine)
    assert Checkpoint.load(fine).recipe.kwargs == {"drop_rate": 0.1, "drop_path_rate": 0.0}
    assert {"img_size", "drop_rate", "drop_path_rate"} == SAFE_MODEL_KWARGS


def test_a_full_disk_while_saving_a_checkpoint_is_one_clear_error(tiny_checkpoint, small_disk):
    # Before: torch's zip writer raised RuntimeError("... unexpected pos ...") - an internal error.
    checkpoint = Checkpoint.load(tiny_checkpoint)
    path = small_disk / "student.pt"
    path.write_bytes(b"the previous checkpoint")
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * (1 << 20))  # fails part-way: the disk is full now
    with pytest.raises(DiskFullError, match=r"student\.pt .*unchanged"):
        checkpoint.save(path)
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "student.pt"]
