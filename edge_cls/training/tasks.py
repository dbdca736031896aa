"""Training tasks: what one step computes, built on ``timm.task``.

timm supplies label training (``ClassificationTask``, ``MultiLabelClassificationTask``), soft
logit KD (``LogitDistillationTask``) and feature KD (``FeatureDistillationTask``, MSE on pooled
pre-logits with a learned projection). It has no DeiT-style hard-label KD, no multi-label KD and
no KD from cached teacher logits, so those three are written here as small subclasses of timm's
tasks; they keep timm's teacher wrapper, which re-normalises the student's batch for the teacher.

Every distillation task feeds the teacher the *same* augmented (and mixed) view as the student
("function matching", Beyer et al. 2022), except the cached one, whose logits were computed once
on un-augmented images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.task import (
    ClassificationTask,
    DistillationTeacher,
    FeatureDistillationTask,
    LogitDistillationTask,
    MultiLabelClassificationTask,
    TrainingTask,
)
from timm.utils import unwrap_model

from edge_cls.errors import ConfigError
from edge_cls.training.config import DistillConfig


def label_criterion(
    *, multi_label: bool, smoothing: float, soft_targets: bool, class_weight: np.ndarray | None = None
) -> nn.Module:
    """The label loss. Single-label uses torch's CrossEntropyLoss, which (unlike timm's 'ce'
    factory) takes class weights, label smoothing and Mixup's soft targets at once."""
    weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
    if multi_label:
        from timm.loss import create_classification_loss

        return create_classification_loss(multi_label=True, smoothing=0.0 if soft_targets else smoothing,
                                          soft_targets=soft_targets, class_weight=weight)
    # Mixup/CutMix already smooth the soft targets they produce; do not smooth twice.
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=0.0 if soft_targets else smoothing)


def classification_task(model: nn.Module, criterion: nn.Module, *, multi_label: bool = False) -> TrainingTask:
    """Train ``model`` on labels alone (timm's tasks)."""
    if multi_label:
        return MultiLabelClassificationTask(model, criterion=criterion, verbose=False)
    return ClassificationTask(model, criterion=criterion, verbose=False)


class TeacherAtSize(nn.Module):
    """Resizes the batch to the teacher's fixed input size (a ViT's position embeddings), so a
    student trained at another size (progressive resizing) still gets the same view distilled."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(size)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})  # timm's teacher wrapper reads mean/std here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    @property
    def head_hidden_size(self) -> int:
        model = self.model
        return getattr(model, "head_hidden_size", None) or model.num_features


def _teacher(teacher: nn.Module, teacher_size: tuple[int, int] | None) -> DistillationTeacher:
    for p in teacher.parameters():
        p.requires_grad_(False)
    module = TeacherAtSize(teacher, teacher_size) if teacher_size else teacher
    return DistillationTeacher(module.eval())


def check_pair(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student must predict the same classes."""
    s, t = unwrap_model(student).num_classes, unwrap_model(teacher).num_classes
    if s != t:
        raise ConfigError(
            f"the teacher predicts {t} classes and the student {s}: fine-tune the teacher on this dataset first "
            "(edge-cls finetune-teacher) so both share the class list"
        )


def distillation_task(
    student: nn.Module, teacher: nn.Module, criterion: nn.Module, config: DistillConfig, *,
    multi_label: bool = False, teacher_size: tuple[int, int] | None = None,
) -> TrainingTask:
    """The distillation task for ``config.kind`` (the teacher is frozen and kept in eval mode)."""
    check_pair(student, teacher)
    wrapped = _teacher(teacher, teacher_size)
    common: dict[str, Any] = dict(student_model=student, teacher_model=wrapped, criterion=criterion,
                                  distill_loss_weight=config.distill_weight, task_loss_weight=config.task_weight,
                                  verbose=False)
    if config.cache_teacher:
        return CachedLogitDistillationTask(**common, temperature=config.temperature, multi_label=multi_label)
    if multi_label:
        if config.kind != "logit":
            raise ConfigError(f"multi-label data supports logit distillation only, not {config.kind!r}")
        return MultiLabelDistillationTask(**common, temperature=config.temperature)
    if config.kind == "hard":
        return HardLabelDistillationTask(**common, temperature=config.temperature)
    if config.kind == "feature":
        return FeatureDistillationTask(**common)
    return LogitDistillationTask(**common, temperature=config.temperature)


class _LogitKD(LogitDistillationTask):
    """timm's logit KD with the KD term swapped: subclasses define ``kd_loss``."""

    def kd_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def teacher_logits(self, input: torch.Tensor, target: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(self.teacher.normalize_input(input, self.student_mean, self.student_std))

    def labels(self, target: Any) -> torch.Tensor:
        return target

    def forward(self, input: torch.Tensor, target: Any) -> dict[str, torch.Tensor]:
        student_logits = self.trainable_module(input)
        task_loss = self.criterion(student_logits, self.labels(target))
        kd_loss = self.kd_loss(student_logits, self.teacher_logits(input, target).to(student_logits.dtype))
        loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss
        return {"loss": loss, "output": student_logits, "task_loss": task_loss, "kd_loss": kd_loss}


class HardLabelDistillationTask(_LogitKD):
    """DeiT's hard distillation (Touvron et al. 2021): cross-entropy on the teacher's top-1."""

    def kd_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_logits, teacher_logits.argmax(-1))


def _sigmoid_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-class binary KD: BCE between the student's and the teacher's tempered sigmoids."""
    soft = torch.sigmoid(teacher_logits / temperature)
    return F.binary_cross_entropy_with_logits(student_logits / temperature, soft) * temperature ** 2


def _softmax_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


class MultiLabelDistillationTask(_LogitKD):
    """KD for multi-label data: independent sigmoid targets from the teacher, BCE."""

    def kd_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return _sigmoid_kd(student_logits, teacher_logits, self.temperature)


class CachedLogitDistillationTask(_LogitKD):
    """KD from teacher logits computed once; the target is ``(labels, teacher_logits)``."""

    def __init__(self, *args: Any, multi_label: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_label = multi_label

    def labels(self, target: Any) -> torch.Tensor:
        return target[0]

    def teacher_logits(self, input: torch.Tensor, target: Any) -> torch.Tensor:
        return target[1]

    def kd_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        kd = _sigmoid_kd if self.multi_label else _softmax_kd
        return kd(student_logits, teacher_logits, self.temperature)


def eval_module(task: TrainingTask, ema: bool = False) -> nn.Module:
    """The bare model a task trains (or its EMA copy): no DDP, EMA or feature-KD wrapper."""
    return unwrap_model(task.get_eval_model(ema=ema))
