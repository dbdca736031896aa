"""One training stage: train (or fine-tune, or distil) one model and write its checkpoint.

``edge-cls build``, ``distill`` and ``finetune-teacher`` all train through :func:`train_stage`,
so a stage's checkpoint, run directory, resume rule and evaluation are the same everywhere::

    <checkpoint>            the finished model (edge-cls checkpoint, with its test metrics)
    <run_dir>/last.pt       resumable state after the last finished epoch (removed once finished)
    <run_dir>/metrics.csv, tensorboard/, teacher_logits.npy (cached KD only)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._fileio import atomic_path
from ..config import DistillConfig, TrainConfig
from ..data import Split, preprocess_split
from ..evaluate import evaluate_logits
from ..preprocess import PreprocessSpec
from .checkpoints import Checkpoint
from .distributed import DistContext
from .loop import criterion_for, fit
from .models import ModelRecipe, create_model, load_backbone_weights, predict_logits, spec_for_model
from .state import STATE_FILE
from .tasks import classification_task, distillation_task

logger = logging.getLogger(__name__)


@dataclass
class Trained:
    """A model a stage produced, with what it takes to evaluate and export it."""

    name: str
    model: nn.Module
    recipe: ModelRecipe
    spec: PreprocessSpec
    checkpoint: Path
    seconds: float = 0.0


@dataclass(frozen=True)
class StagePaths:
    """Where a stage writes: its checkpoint and its run directory."""

    checkpoint: Path
    run_dir: Path

    @classmethod
    def in_build(cls, out_dir: Path, name: str) -> StagePaths:
        """``<out>/checkpoints/<name>.pt`` and ``<out>/runs/<name>/``: the build directory layout."""
        return cls(Path(out_dir) / "checkpoints" / f"{name}.pt", Path(out_dir) / "runs" / name)


@dataclass(frozen=True, kw_only=True)
class StageModel:
    """The model a stage starts from: one given, or created from the recipe (hub or local weights)."""

    recipe: ModelRecipe
    model: nn.Module | None = None
    pretrained: bool = False
    weights: Path | None = None
    input_size: int = 0  # 0: the model's own


def train_stage(
    name: str, start: StageModel, splits: dict[str, Split], train: TrainConfig, paths: StagePaths, ctx: DistContext,
    *, teacher: Trained | None = None, distill: DistillConfig | None = None, resume: bool = False,
    record: dict[str, Any] | None = None,
) -> Trained:
    """Train one model on labels (or distilled from ``teacher``), evaluate it on the test split,
    and write its checkpoint (rank 0). With ``resume`` a finished stage is loaded from its
    checkpoint and an interrupted one continues from ``paths.run_dir/last.pt``.
    ``record``: the resolved run config, stored in the checkpoint."""
    state = paths.run_dir / STATE_FILE
    if resume and paths.checkpoint.is_file() and not state.is_file():
        checkpoint = Checkpoint.load(paths.checkpoint)
        logger.info("%s: finished earlier, loaded %s", name, paths.checkpoint)
        return Trained(name, checkpoint.build(), checkpoint.recipe, checkpoint.spec, paths.checkpoint,
                       checkpoint.metrics.get("train_seconds", 0.0))
    model = _initial_model(start, train)
    spec = spec_for_model(model, input_size=start.input_size or None)
    split = splits["train"]
    criterion = criterion_for(split, train)
    cached = None
    if teacher is None:
        task = classification_task(model, criterion, multi_label=split.multi_label)
    else:
        distill = distill or DistillConfig()
        # The teacher sees the student's view at its own input size (a fixed-size ViT needs it; a CNN
        # fine-tuned at another size predicts best there, as the cached path computes it).
        task = distillation_task(model, teacher.model, criterion, distill, multi_label=split.multi_label,
                                 teacher_size=teacher.spec.input_size)
        if distill.cache_teacher:
            cached = cache_teacher_logits(teacher, split, paths.run_dir / "teacher_logits.npy", ctx, reuse=resume)
    result = fit(task, split, spec, train, desc=name, val=preprocess_split(splits["val"], spec), run_dir=paths.run_dir,
                 resume=resume and state.is_file(), context=ctx, teacher_logits=cached)
    trained = result.model.eval()
    test_batch, test_targets = preprocess_split(splits["test"], spec)
    evaluation = evaluate_logits(predict_logits(trained, test_batch), test_targets, split.classes)
    if ctx.is_main:
        Checkpoint.from_model(
            trained.cpu(), start.recipe, spec, split.classes, test=evaluation.metrics,
            test_top1=evaluation.metrics.get("top1", evaluation.metrics.get("mAP")), train_seconds=result.seconds,
            history=result.history, train_config=asdict(train), config=record or {},
        ).save(paths.checkpoint)
        state.unlink(missing_ok=True)  # finished: the checkpoint is the record now
    ctx.barrier()
    return Trained(name, trained, start.recipe, spec, paths.checkpoint, result.seconds)


def _initial_model(start: StageModel, train: TrainConfig) -> nn.Module:
    if start.model is not None:
        return start.model
    torch.manual_seed(train.seed)  # the same initial weights for the distilled and the label-only student
    model = create_model(start.recipe, pretrained=start.pretrained and start.weights is None)
    if start.weights is not None:
        load_backbone_weights(model, start.weights)
    return model


def cache_teacher_logits(
    teacher: Trained, split: Split, path: Path, ctx: DistContext, *, reuse: bool = False
) -> np.ndarray:
    """The teacher's logits on every training image (its own eval preprocessing), computed once;
    ``reuse`` (resuming the same run) takes an existing cache of the right length."""
    if reuse and path.is_file():
        logits = np.load(path)
        if logits.shape[0] == len(split):
            logger.info("teacher logits: reusing %s", path)
            return logits
    started = time.perf_counter()
    batch, _ = preprocess_split(split, teacher.spec)
    logits = predict_logits(teacher.model, batch, device=ctx.device)
    if ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, logits)
    logger.info("teacher logits for %d images cached in %.1fs", len(split), time.perf_counter() - started)
    return logits
