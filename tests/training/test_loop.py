import shutil

import numpy as np
import pytest
import torch

from edge_cls.data import load_splits, preprocess_split
from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.quality.evaluate import evaluate_logits
from edge_cls.training.config import TrainConfig
from edge_cls.training.loop import TrainingDivergedError, criterion_for, fit, size_for_epoch
from edge_cls.training.models import ModelRecipe, create_model, predict_logits, spec_for_model
from edge_cls.training.state import STATE_FILE, read_state
from edge_cls.training.tasks import classification_task

SIZE = 32


def _task(splits, config, seed=0, classes=10):
    torch.manual_seed(seed)
    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=classes))
    return classification_task(model, criterion_for(splits["train"], config)), spec_for_model(model, input_size=SIZE)


def test_training_learns(digits_root):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=3, lr=5e-3, batch_size=32)
    task, spec = _task(splits, config)
    val = preprocess_split(splits["val"], spec)
    before = float((predict_logits(task.trainable_module, val[0]).argmax(1) == val[1]).mean())
    result = fit(task, splits["train"], spec, config, val=val)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["val_top1"] > before
    assert {"val_top5", "val_ece", "lr", "seconds"} <= set(result.history[-1])


def test_resume_after_an_interruption_matches_an_uninterrupted_run(digits_root, tmp_path, monkeypatch):
    """EMA, Mixup, a class-balanced sampler and progressive sizes: all state must survive."""
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=3, lr=5e-3, batch_size=32, ema_decay=0.9, mixup=0.2, balance="sampler",
                         sizes=(24, SIZE), clip_grad=1.0)
    task, spec = _task(splits, config)
    val = preprocess_split(splits["val"], spec)
    whole = fit(task, splits["train"], spec, config, val=val, run_dir=tmp_path / "whole")

    # The same run, killed half-way through its third epoch (a KeyboardInterrupt from the data loader).
    import edge_cls.training.loop as train_module

    original = train_module.ImageDataset.__getitem__
    calls = {"n": 0}

    def interrupt_in_epoch_three(self, index):
        calls["n"] += 1
        if calls["n"] > 2 * len(splits["train"]) + 50:
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(train_module.ImageDataset, "__getitem__", interrupt_in_epoch_three)
    task, spec = _task(splits, config)
    with pytest.raises(KeyboardInterrupt):
        fit(task, splits["train"], spec, config, val=val, run_dir=tmp_path / "cut")
    monkeypatch.setattr(train_module.ImageDataset, "__getitem__", original)
    assert read_state(tmp_path / "cut" / STATE_FILE)["epoch"] == 2

    # A fresh process would build a new model with other weights: the state file must restore everything.
    task, spec = _task(splits, config, seed=123)
    resumed = fit(task, splits["train"], spec, config, val=val, run_dir=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history):
        for key in ("loss", "val_top1", "val_ema_top1", "lr", "size"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    final_whole, final_resumed = whole.model.state_dict(), resumed.model.state_dict()
    for key in final_whole:
        torch.testing.assert_close(final_whole[key], final_resumed[key], atol=1e-4, rtol=1e-4)
    csv_rows = (tmp_path / "cut" / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("epoch,")
    assert any((tmp_path / "cut" / "tensorboard").iterdir())


def test_resume_from_a_truncated_state_file_is_a_clear_error(digits_root, tmp_path):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=2, lr=5e-3, batch_size=32)
    task, spec = _task(splits, config)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(task, splits["train"], spec, config, run_dir=run, on_epoch_end=_interrupt)
    state = run / STATE_FILE
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    task, spec = _task(splits, config)
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        fit(task, splits["train"], spec, config, run_dir=run, resume=True)
    assert state.read_bytes() == data[: len(data) // 2]  # left as it was
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(task, splits["train"], spec, config, run_dir=tmp_path / "nothing", resume=True)


def _interrupt(epoch, record):
    raise KeyboardInterrupt


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits_root, tmp_path):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=3, batch_size=32)
    task, spec = _task(splits, config)
    run = tmp_path / "run"

    def poison(epoch, record):
        with torch.no_grad():
            task.trainable_module.classifier.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"lower the learning rate.*last good checkpoint is .*last\.pt"):
        fit(task, splits["train"], spec, config, run_dir=run, on_epoch_end=poison)
    state = read_state(run / STATE_FILE)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_class_weighting_raises_minority_recall(demo_root, tmp_path):
    """Classes 3 and 5 with 80 images each, class 8 with 6: the weighted loss finds the 8s."""
    root = tmp_path / "imbalanced"
    per_class = {
        "train": {"3": 80, "5": 80, "8": 6},
        "val": {"3": 10, "5": 10, "8": 10},
        "test": {"3": 30, "5": 30, "8": 30},
    }
    for split, counts in per_class.items():
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for path in sorted((demo_root / split / name).iterdir())[:count]:
                shutil.copy(path, root / split / name / path.name)
    splits = load_splits(root)
    recall = {}
    for balance in ("none", "weighted"):
        config = TrainConfig(epochs=3, batch_size=32, lr=5e-3, balance=balance)
        task, spec = _task(splits, config, classes=3)
        result = fit(task, splits["train"], spec, config)
        batch, targets = preprocess_split(splits["test"], spec)
        evaluation = evaluate_logits(predict_logits(result.model, batch), targets, splits["train"].classes)
        recall[balance] = evaluation.per_class["8"]["recall"]
    assert recall["weighted"] >= recall["none"] + 0.3, recall


def test_progressive_sizes_end_at_the_export_size(digits_root):
    config = TrainConfig(epochs=6, sizes=(16, 24, 32))
    assert [size_for_epoch(config, e, 32) for e in range(6)] == [16, 16, 24, 24, 32, 32]
    assert size_for_epoch(TrainConfig(epochs=2), 0, 32) == 32
    splits = load_splits(digits_root)
    bad = TrainConfig(epochs=2, sizes=(16, 24))
    task, spec = _task(splits, bad)
    with pytest.raises(ConfigError, match="last progressive size must be the export size 32"):
        fit(task, splits["train"], spec, bad)


def test_head_only_training_freezes_the_backbone(digits_root):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=1, batch_size=32, lr=5e-3, freeze_backbone=True)
    task, spec = _task(splits, config)
    model = task.trainable_module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(task, splits["train"], spec, config)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # BatchNorm statistics stay frozen too


@pytest.mark.parametrize("kwargs", [
    {"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"amp": "fp8"}, {"balance": "oversample"},
    {"mixup": 0.2, "batch_size": 31}, {"ema_decay": 1.0}, {"sizes": (4, 32)},
])
def test_bad_train_config(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_fp16_amp_on_cpu_is_a_clear_error(digits_root):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=1, batch_size=32, amp="fp16")
    task, spec = _task(splits, config)
    with pytest.raises(ConfigError, match="fp16 AMP needs a CUDA device"):
        fit(task, splits["train"], spec, config)


def test_bf16_amp_trains_on_cpu(digits_root):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=1, batch_size=32, lr=5e-3, amp="bf16")
    task, spec = _task(splits, config)
    result = fit(task, splits["train"], spec, config)
    assert np.isfinite(result.history[0]["loss"])


def test_a_finished_run_resumes_to_its_result_and_can_be_extended(digits_root, tmp_path):
    splits = load_splits(digits_root)
    config = TrainConfig(epochs=2, lr=5e-3, batch_size=32)
    task, spec = _task(splits, config)
    run = tmp_path / "run"
    first = fit(task, splits["train"], spec, config, run_dir=run)
    task, spec = _task(splits, config, seed=9)
    again = fit(task, splits["train"], spec, config, run_dir=run, resume=True)  # e.g. it died while saving
    assert len(again.history) == 2
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value)
    longer = TrainConfig(epochs=4, lr=5e-3, batch_size=32)
    task, spec = _task(splits, longer, seed=9)
    extended = fit(task, splits["train"], spec, longer, run_dir=run, resume=True)
    assert [h["epoch"] for h in extended.history] == [1, 2, 3, 4]
    assert extended.history[2]["lr"] > 10 * longer.lr * 0.01  # the 4-epoch cosine, not the finished 2-epoch one
