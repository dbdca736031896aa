"""Training: teacher, student alone and distilled student, all through ``timm.task``.

The loop is generic over a timm ``TrainingTask`` (``forward(input, target) -> {"loss", "output"}``):
``ClassificationTask`` trains a model on labels, ``LogitDistillationTask`` distils a teacher into
a student (KL on temperature-softened logits plus the label loss). timm's data transforms,
optimizer and scheduler factories do the rest; only the epoch loop is written here, because timm
ships its loop as a script (``train.py``), not as a library function.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.data import create_transform
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask, LogitDistillationTask, TrainingTask
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ImageDataset, ImageFolderSplit
from .errors import ConfigError, EdgeClsError
from .models import predict_logits
from .preprocess import PreprocessSpec

logger = logging.getLogger(__name__)


class TrainingDivergedError(EdgeClsError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run's schedule and augmentation."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.0  # digits and text must not be mirrored; 0.5 suits natural images
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Logit distillation: loss = task_weight * CE + distill_weight * T^2 * KL(teacher || student)."""

    temperature: float = 4.0
    distill_weight: float = 1.0
    task_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.distill_weight < 0 or self.task_weight < 0:
            raise ConfigError("loss weights must not be negative")


@dataclass
class TrainResult:
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_transform(spec: PreprocessSpec, config: TrainConfig) -> Any:
    """timm's training transform (RandomResizedCrop, flips, normalise) at the spec's size and stats."""
    return create_transform(
        input_size=(3, *spec.input_size),
        is_training=True,
        scale=config.scale,
        hflip=config.hflip,
        color_jitter=None,
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
    )


def classification_task(model: nn.Module, config: TrainConfig) -> TrainingTask:
    return ClassificationTask(model, criterion_kwargs={"smoothing": config.label_smoothing}, verbose=False)


def distillation_task(student: nn.Module, teacher: nn.Module, config: TrainConfig, distill: DistillConfig) -> TrainingTask:
    """timm's logit distillation; it re-normalises the student's batch for the teacher's mean/std."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return LogitDistillationTask(
        student_model=student,
        teacher_model=teacher.eval(),
        criterion_kwargs={"smoothing": config.label_smoothing},
        distill_loss_weight=distill.distill_weight,
        task_loss_weight=distill.task_weight,
        temperature=distill.temperature,
        verbose=False,
    )


def fit(
    task: TrainingTask,
    train_split: ImageFolderSplit,
    spec: PreprocessSpec,
    config: TrainConfig,
    *,
    desc: str = "train",
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``task`` on ``train_split``; evaluate on ``val`` (preprocessed arrays) after each epoch."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)  # timm's random crops draw from Python's random module
    np.random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    dataset = ImageDataset(train_split, train_transform(spec, config))
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=len(dataset) > config.batch_size,
        num_workers=config.workers, generator=generator,
    )
    module = task.trainable_module
    optimizer = create_optimizer_v2(module, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.01, updates_per_epoch=len(loader), step_on_epochs=False,
    )
    start = time.perf_counter()
    result = TrainResult(seconds=0.0)
    updates = 0
    for epoch in range(config.epochs):
        task.train()
        losses = []
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{config.epochs}", leave=False, unit="batch", mininterval=1.0)
        for images, targets in bar:
            loss = task(images, targets)["loss"]
            if not math.isfinite(loss.item()):
                raise TrainingDivergedError(
                    f"{desc}: loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate (--lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if val is not None:
            record["val_top1"] = accuracy(module, *val)
        result.history.append(record)
        logger.info("%s epoch %d/%d: %s", desc, epoch + 1, config.epochs, record)
    task.eval()
    result.seconds = time.perf_counter() - start
    return result


def accuracy(model: nn.Module, batch: np.ndarray, targets: np.ndarray) -> float:
    return float((predict_logits(model, batch).argmax(1) == targets).mean())
