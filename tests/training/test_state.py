"""The resumable state on disk: the previous epoch's state kept, a truncated one survived, a full disk survived."""

import errno
import logging

import pytest
import torch

import edge_cls.training.state as state_module
from edge_cls._fileio import DiskFullError
from edge_cls.data import load_splits, preprocess_split
from edge_cls.errors import CheckpointError
from edge_cls.training.config import TrainConfig
from edge_cls.training.loop import criterion_for, fit
from edge_cls.training.models import ModelRecipe, create_model, spec_for_model
from edge_cls.training.state import STATE_FILE, previous_state_path, read_resumable_state, read_state
from edge_cls.training.tasks import classification_task

CONFIG = TrainConfig(epochs=3, lr=5e-3, batch_size=32)


def make_task(splits, seed=0):
    torch.manual_seed(seed)
    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    return classification_task(model, criterion_for(splits["train"], CONFIG)), spec_for_model(model, input_size=32)


def stop_after(epochs):
    def hook(epoch, record):
        if epoch == epochs:
            raise KeyboardInterrupt

    return hook


def test_a_truncated_state_falls_back_to_the_previous_epoch_and_ends_the_same(digits_root, tmp_path, caplog):
    splits = load_splits(digits_root)
    task, spec = make_task(splits)
    val = preprocess_split(splits["val"], spec)
    whole = fit(task, splits["train"], spec, CONFIG, val=val, run_dir=tmp_path / "whole")

    run = tmp_path / "cut"
    task, spec = make_task(splits)
    with pytest.raises(KeyboardInterrupt):
        fit(task, splits["train"], spec, CONFIG, val=val, run_dir=run, on_epoch_end=stop_after(2))
    last, previous = run / STATE_FILE, previous_state_path(run / STATE_FILE)
    assert previous.name == "last.pt.prev"
    assert read_state(last)["epoch"] == 2 and read_state(previous)["epoch"] == 1
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # the disk lost the end of the newest state

    task, spec = make_task(splits, seed=7)
    with caplog.at_level(logging.WARNING, logger="edge_cls"):
        resumed = fit(task, splits["train"], spec, CONFIG, val=val, run_dir=run, resume=True)
    warning = next(r.getMessage() for r in caplog.records if "previous epoch's state" in r.getMessage())
    assert str(last) in warning and str(previous) in warning and "truncated" in warning
    assert resumed.resumed_from == 1
    for a, b in zip(whole.history, resumed.history):
        for key in ("loss", "val_top1", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=1e-4, rtol=1e-4)


def interrupted_after_two_epochs(splits, run) -> None:
    """A run stopped (KeyboardInterrupt) after its second epoch: last.pt and last.pt.prev are on disk."""
    task, spec = make_task(splits)
    with pytest.raises(KeyboardInterrupt):
        fit(task, splits["train"], spec, CONFIG, run_dir=run, on_epoch_end=stop_after(2))


def test_a_truncated_state_is_never_promoted_over_the_good_previous_one(digits_root, tmp_path):
    splits, run = load_splits(digits_root), tmp_path / "run"
    interrupted_after_two_epochs(splits, run)
    last = run / STATE_FILE
    last.write_bytes(last.read_bytes()[:1000])
    state, source = read_resumable_state(last)
    assert source == previous_state_path(last) and state["epoch"] == 1
    # Writing the next state must not rotate the truncated file into last.pt.prev.
    task, spec = make_task(splits)
    with pytest.raises(KeyboardInterrupt):
        fit(task, splits["train"], spec, CONFIG, run_dir=run, resume=True, on_epoch_end=stop_after(2))
    assert read_state(last)["epoch"] == 2 and read_state(previous_state_path(last))["epoch"] == 1


def test_both_states_unreadable_is_one_clear_error(tmp_path):
    last = tmp_path / STATE_FILE
    last.write_bytes(b"PK\x03\x04 truncated")
    previous_state_path(last).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"last\.pt is unreadable or truncated"):
        read_resumable_state(last)


def test_a_full_disk_while_saving_the_state_keeps_the_last_good_one(digits_root, tmp_path, monkeypatch):
    splits = load_splits(digits_root)
    task, spec = make_task(splits)
    run = tmp_path / "run"
    real_save = torch.save

    def save_until_the_disk_is_full(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(state_module.torch, "save", save_until_the_disk_is_full)
    with pytest.raises(DiskFullError, match=r"last\.pt .*unchanged"):
        fit(task, splits["train"], spec, CONFIG, run_dir=run)
    assert read_state(run / STATE_FILE)["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_a_kill_between_the_two_renames_resumes_from_the_previous_state(digits_root, tmp_path, caplog):
    """The old state is renamed to last.pt.prev before the new one takes its name: a kill in between
    leaves no last.pt, and the run goes on from last.pt.prev."""
    splits, run = load_splits(digits_root), tmp_path / "run"
    interrupted_after_two_epochs(splits, run)
    last = run / STATE_FILE
    assert last.stat().st_ino != previous_state_path(last).stat().st_ino  # two files, not two names for one
    last.unlink()
    task, spec = make_task(splits, seed=3)
    with caplog.at_level(logging.WARNING, logger="edge_cls"):
        resumed = fit(task, splits["train"], spec, CONFIG, run_dir=run, resume=True)
    assert resumed.resumed_from == 1 and len(resumed.history) == 3
    assert any("does not exist" in r.getMessage() and "last.pt.prev" in r.getMessage() for r in caplog.records)
