"""One training stage: train (or fine-tune, or distil) one model and write its checkpoint.

``edge-cls build``, ``distill`` and ``finetune-teacher`` all train through :func:`train_stage`,
so a stage's checkpoint, run directory, resume rule and evaluation are the same everywhere::

    <checkpoint>            the finished model (edge-cls checkpoint, with its test metrics)
    <run_dir>/last.pt       resumable state after the last finished epoch (removed once finished)
    <run_dir>/metrics.csv, tensorboard/, teacher_logits.npy (cached KD only)
    <run_dir>/val.npy       the preprocessed validation split, memory-mapped (removed once finished)

Memory does not grow with the data set: the validation split and the teacher-logit cache are
memory-mapped ``.npy`` files in the run directory (one per rank under torchrun, since a run
directory need not be shared between machines; a rank's validation file holds only the rows it
scores), and the test split is scored batch by batch.
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

from edge_cls.data import Split, iter_split_batches, preprocess_split_to_file, save_rows
from edge_cls.preprocess import PreprocessSpec
from edge_cls.quality.evaluate import evaluate_logits
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.config import DistillConfig, TrainConfig
from edge_cls.training.distributed import DistContext
from edge_cls.training.loop import criterion_for, fit
from edge_cls.training.models import ModelRecipe, create_model, load_backbone_weights, predict_logits, spec_for_model
from edge_cls.training.state import STATE_FILE, previous_state_path
from edge_cls.training.tasks import classification_task, distillation_task

logger = logging.getLogger(__name__)

PREDICT_BATCH = 64  # images preprocessed and run at a time when scoring a split: 38 MB at 224 px


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
    interrupted = state.is_file() or previous_state_path(state).is_file()
    if resume and paths.checkpoint.is_file() and not interrupted:
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
    val_file = paths.run_dir / _per_rank("val.npy", ctx)
    val = preprocess_split_to_file(splits["val"], spec, val_file, shard=(ctx.rank, ctx.world_size))
    result = fit(task, split, spec, train, desc=name, val=val, run_dir=paths.run_dir,
                 resume=resume and interrupted, context=ctx, teacher_logits=cached)
    del val
    val_file.unlink(missing_ok=True)
    trained = result.model.eval()
    test_logits, test_targets = split_logits(trained, splits["test"], spec)
    evaluation = evaluate_logits(test_logits, test_targets, split.classes)
    if ctx.is_main:
        Checkpoint.from_model(
            trained.cpu(), start.recipe, spec, split.classes, test=evaluation.metrics,
            test_top1=evaluation.metrics.get("top1", evaluation.metrics.get("mAP")), train_seconds=result.seconds,
            history=result.history, train_config=asdict(train), config=record or {},
            task="multi_label" if split.multi_label else "single_label",
        ).save(paths.checkpoint)
        state.unlink(missing_ok=True)  # finished: the checkpoint is the record now
        previous_state_path(state).unlink(missing_ok=True)
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


def split_logits(model: nn.Module, split: Split, spec: PreprocessSpec, device: torch.device | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A model's logits on every image of a split, preprocessed and run one batch at a time, and the
    split's targets."""
    parts = [predict_logits(model, batch, chunk=PREDICT_BATCH, device=device)
             for batch, _ in iter_split_batches(split, spec, PREDICT_BATCH)]
    return np.concatenate(parts), split.target_array()


def _per_rank(name: str, ctx: DistContext) -> str:
    return name if ctx.world_size == 1 else name.replace(".npy", f".rank{ctx.rank}.npy")


def cache_teacher_logits(
    teacher: Trained, split: Split, path: Path, ctx: DistContext, *, reuse: bool = False
) -> np.ndarray:
    """The teacher's logits on every training image (its own eval preprocessing), computed once
    into a memory-mapped ``.npy`` file; ``reuse`` (resuming the same run) takes an existing cache of
    the right length. Under torchrun each rank keeps its own file beside ``path``."""
    path = path.with_name(_per_rank(path.name, ctx))
    if reuse and path.is_file():
        try:
            logits = np.load(path, mmap_mode="c")
        except (OSError, ValueError) as e:  # truncated or not a .npy file: compute it again
            logger.warning("teacher logits: %s is unreadable (%s); computing them again", path, e)
        else:
            if logits.ndim == 2 and logits.shape[0] == len(split):
                logger.info("teacher logits: reusing %s", path)
                return logits
    started = time.perf_counter()
    chunks = (predict_logits(teacher.model, batch, chunk=PREDICT_BATCH, device=ctx.device)
              for batch, _ in iter_split_batches(split, teacher.spec, PREDICT_BATCH))
    logits = save_rows(path, len(split), chunks)
    logger.info("teacher logits for %d images cached in %.1fs", len(split), time.perf_counter() - started)
    return logits
