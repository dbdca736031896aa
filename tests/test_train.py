import numpy as np
import pytest
import torch

from edge_cls.data import load_splits, preprocess_split
from edge_cls.errors import ConfigError
from edge_cls.models import ModelRecipe, create_model, spec_for_model
from edge_cls.train import (
    DistillConfig, TrainConfig, TrainingDivergedError, accuracy, classification_task, distillation_task, fit,
)


def test_training_learns(digits_root):
    splits = load_splits(digits_root)
    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    spec = spec_for_model(model, input_size=32)
    val = preprocess_split(splits["val"], spec)
    before = accuracy(model, *val)
    result = fit(classification_task(model, TrainConfig(epochs=3, lr=5e-3, batch_size=32)), splits["train"], spec,
                 TrainConfig(epochs=3, lr=5e-3, batch_size=32), val=val)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["val_top1"] > before


def test_distillation_renormalises_for_the_teacher():
    student = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    teacher = create_model(ModelRecipe(name="test_vit", num_classes=10, kwargs={"img_size": 32}))
    task = distillation_task(student, teacher, TrainConfig(), DistillConfig(temperature=2.0))
    raw = torch.rand(2, 3, 32, 32)
    student_in = (raw - task.student_mean) / task.student_std
    teacher_in = task.teacher.normalize_input(student_in, task.student_mean, task.student_std)
    torch.testing.assert_close(teacher_in, (raw - 0.5) / 0.5, atol=1e-5, rtol=0)
    out = task(student_in, torch.tensor([1, 2]))
    assert out["loss"].requires_grad and {"task_loss", "kd_loss"} <= set(out)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_nan_loss_stops_with_a_clear_error(digits_root):
    splits = load_splits(digits_root)
    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    config = TrainConfig(epochs=1, batch_size=32)
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(classification_task(model, config), splits["train"], spec_for_model(model, input_size=32), config)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}])
def test_bad_train_config(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_bad_distill_config():
    with pytest.raises(ConfigError):
        DistillConfig(temperature=0)
