import pytest
import torch
import torch.nn.functional as F
from timm.task import FeatureDistillationTask, LogitDistillationTask

from edge_cls.errors import ConfigError
from edge_cls.training.models import ModelRecipe, create_model
from edge_cls.training.tasks import (
    CachedLogitDistillationTask,
    DistillConfig,
    HardLabelDistillationTask,
    MultiLabelDistillationTask,
    TeacherAtSize,
    distillation_task,
    label_criterion,
)


def _pair(classes=10, teacher_classes=None):
    torch.manual_seed(0)
    student = create_model(ModelRecipe(name="test_efficientnet", num_classes=classes))
    teacher = create_model(
        ModelRecipe(name="test_vit", num_classes=teacher_classes or classes, kwargs={"img_size": 32})
    )
    return student, teacher


def _criterion(multi_label=False):
    return label_criterion(multi_label=multi_label, smoothing=0.1, soft_targets=False)


def test_the_teacher_sees_the_students_view_in_its_own_normalisation():
    """Student: ImageNet mean/std; test_vit teacher: mean/std 0.5. The same image must reach both."""
    student, teacher = _pair()
    task = distillation_task(student, teacher, _criterion(), DistillConfig(temperature=2.0))
    assert isinstance(task, LogitDistillationTask)
    raw = torch.rand(2, 3, 32, 32)
    student_in = (raw - task.student_mean) / task.student_std
    teacher_in = task.teacher.normalize_input(student_in, task.student_mean, task.student_std)
    torch.testing.assert_close(teacher_in, (raw - 0.5) / 0.5, atol=1e-5, rtol=0)
    out = task(student_in, torch.tensor([1, 2]))
    assert out["loss"].requires_grad and {"task_loss", "kd_loss"} <= set(out)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_hard_label_kd_is_cross_entropy_on_the_teachers_top1():
    student, teacher = _pair()
    task = distillation_task(student, teacher, _criterion(), DistillConfig(kind="hard", task_weight=0.0))
    assert isinstance(task, HardLabelDistillationTask)
    x = torch.randn(4, 3, 32, 32)
    out = task(x, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        teacher_top1 = teacher(task.teacher.normalize_input(x, task.student_mean, task.student_std)).argmax(-1)
        expected = F.cross_entropy(out["output"], teacher_top1)
    torch.testing.assert_close(out["loss"], expected)


def test_feature_kd_learns_a_projection_to_the_teachers_width():
    student, teacher = _pair()
    task = distillation_task(student, teacher, _criterion(), DistillConfig(kind="feature"))
    assert isinstance(task, FeatureDistillationTask)
    assert task.trainable_module.projection.out_features == teacher.num_features
    out = task(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    out["loss"].backward()
    assert task.trainable_module.projection.weight.grad is not None


def test_multi_label_kd_uses_sigmoid_targets():
    student, teacher = _pair(classes=4)
    task = distillation_task(
        student,
        teacher,
        _criterion(multi_label=True),
        DistillConfig(temperature=1.0, task_weight=0.0),
        multi_label=True,
    )
    assert isinstance(task, MultiLabelDistillationTask)
    x = torch.randn(3, 3, 32, 32)
    out = task(x, torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.float32))
    with torch.no_grad():
        t = teacher(task.teacher.normalize_input(x, task.student_mean, task.student_std))
    expected = F.binary_cross_entropy_with_logits(out["output"], torch.sigmoid(t))
    torch.testing.assert_close(out["loss"], expected)
    with pytest.raises(ConfigError, match="logit distillation only"):
        distillation_task(student, teacher, _criterion(True), DistillConfig(kind="hard"), multi_label=True)


def test_cached_kd_takes_the_teachers_logits_from_the_target():
    student, teacher = _pair()
    task = distillation_task(student, teacher, _criterion(), DistillConfig(cache_teacher=True, temperature=2.0))
    assert isinstance(task, CachedLogitDistillationTask)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    cached = torch.randn(2, 10)
    out = task(x, (labels, cached))
    expected = F.kl_div(F.log_softmax(out["output"] / 2, -1), F.log_softmax(cached / 2, -1), reduction="batchmean",
                        log_target=True) * 4
    torch.testing.assert_close(out["kd_loss"], expected)  # the cached logits, not the live teacher's
    with torch.no_grad():
        live = teacher(task.teacher.normalize_input(x, task.student_mean, task.student_std))
    live_loss = F.kl_div(F.log_softmax(out["output"] / 2, -1), F.log_softmax(live / 2, -1), reduction="batchmean",
                         log_target=True) * 4
    assert not torch.allclose(out["kd_loss"], live_loss)
    assert out["loss"].requires_grad


def test_teacher_and_student_must_share_the_classes():
    student, teacher = _pair(classes=10, teacher_classes=1000)
    with pytest.raises(ConfigError, match="teacher predicts 1000 classes and the student 10"):
        distillation_task(student, teacher, _criterion(), DistillConfig())


def test_a_fixed_size_teacher_gets_the_view_resized():
    _, teacher = _pair()
    wrapped = TeacherAtSize(teacher.eval(), (32, 32))
    assert wrapped.pretrained_cfg["mean"] == teacher.pretrained_cfg["mean"]
    assert wrapped(torch.randn(2, 3, 24, 24)).shape == (2, 10)  # test_vit alone would reject 24 px


@pytest.mark.parametrize("kwargs", [{"kind": "attention"}, {"temperature": 0}, {"distill_weight": -1},
                                    {"cache_teacher": True, "kind": "feature"}])
def test_bad_distill_config(kwargs):
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)
