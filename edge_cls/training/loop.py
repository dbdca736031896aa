"""The training loop: any ``timm.task`` task, one process or many, resumable.

timm ships its loop as a script (``train.py``), not a library function, so the loop is written
here; everything inside it is timm's or torch's: transforms, Mixup/CutMix, ``ModelEmaV3`` (via
the task's ``setup_ema``), ``create_optimizer_v2``, the cosine scheduler with warm-up, gradient
clipping, ``torch.autocast``, DDP through the task's ``prepare_distributed``.

:func:`fit` is three steps: :func:`_setup` (optimizer, schedule, sampler, AMP, Mixup, resume),
:func:`_train_epoch` (one pass over the data) and :func:`_end_epoch` (validation, the state in
:mod:`edge_cls.training.state`, metrics.csv, TensorBoard). The sampler order and every random
stream are re-derived from (seed, epoch) at each epoch start, so a resumed run ends where an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import TrainingTask
from timm.utils import dispatch_clip_grad, unwrap_model
from torch.utils.data import DataLoader

from edge_cls._fileio import write_text_atomic
from edge_cls.data import Split, class_weights, log_class_counts, sample_weights
from edge_cls.errors import ConfigError, EdgeClsError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.progress import progress
from edge_cls.quality.evaluate import evaluate_logits
from edge_cls.training.config import TrainConfig
from edge_cls.training.datasets import ImageDataset, train_transform
from edge_cls.training.distributed import DistContext, EpochSampler, init_from_env
from edge_cls.training.models import predict_logits
from edge_cls.training.state import STATE_FILE, read_resumable_state, restore_state, save_state
from edge_cls.training.tasks import eval_module, label_criterion

logger = logging.getLogger(__name__)


class TrainingDivergedError(EdgeClsError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None  # the trained model (the EMA copy when EMA is on), unwrapped
    resumed_from: int = 0  # epochs already done when the run started


@dataclass
class _Run:
    """What :func:`_setup` builds for one :func:`fit` call."""

    task: TrainingTask
    split: Split
    spec: PreprocessSpec
    config: TrainConfig
    ctx: DistContext
    desc: str
    optimizer: Any
    scheduler: Any
    scaler: Any
    mixup: Mixup | None
    sampler: EpochSampler
    amp_dtype: torch.dtype | None
    drop_last: bool
    steps_per_epoch: int
    run_path: Path | None
    teacher_logits: np.ndarray | None
    updates: int = 0
    writer: Any = None


def criterion_for(split: Split, config: TrainConfig) -> nn.Module:
    """The label loss for this split and config: soft targets under Mixup, class weights if asked."""
    weights = class_weights(split) if config.balance == "weighted" else None
    if weights is not None:
        logger.info("class weights: %s", ", ".join(f"{c} {w:.2f}" for c, w in zip(split.classes, weights)))
    return label_criterion(multi_label=split.multi_label, smoothing=config.label_smoothing,
                           soft_targets=config.mixes, class_weight=weights)


def size_for_epoch(config: TrainConfig, epoch: int, final: int) -> int:
    """Progressive resizing: the epochs split into equal stages, one per size, in order."""
    if not config.sizes:
        return final
    return config.sizes[min(epoch * len(config.sizes) // config.epochs, len(config.sizes) - 1)]


def epoch_seed(seed: int, epoch: int = 0, rank: int = 0) -> int:
    """One seed per (run seed, epoch, rank): what every random stream of that epoch starts from."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed torch, numpy and Python's random (timm's crops and Mixup draw from the last two)."""
    value = epoch_seed(seed, epoch, rank)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def fit(
    task: TrainingTask,
    train_split: Split,
    spec: PreprocessSpec,
    config: TrainConfig,
    *,
    desc: str = "train",
    val: tuple[np.ndarray, np.ndarray] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] = False,
    context: DistContext | None = None,
    teacher_logits: np.ndarray | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``task`` on ``train_split``; evaluate on ``val`` (preprocessed arrays) after each epoch.

    ``run_dir``: where the per-epoch state, metrics.csv and TensorBoard events go (rank 0 only).
    ``resume``: True to continue from ``run_dir/last.pt``, or a path to a state file.
    ``teacher_logits``: cached teacher logits, one row per training image, for a cached-KD task.
    """
    run, saved, state_path = _setup(task, train_split, spec, config, desc=desc, run_dir=run_dir, resume=resume,
                                    context=context, teacher_logits=teacher_logits)
    result = TrainResult(seconds=0.0)
    start_epoch = 0
    if saved is not None:
        restore_state(saved, state_path, task, run.optimizer, run.scaler, config)
        start_epoch = min(int(saved["epoch"]), config.epochs)
        result.history = list(saved["history"])[:start_epoch]
        result.resumed_from = start_epoch
        logger.info("%s: resumed from %s after epoch %d of %d", desc, state_path, start_epoch, config.epochs)
    run.writer = _tensorboard(run.run_path, start_epoch) if run.run_path and run.ctx.is_main else None
    started = time.perf_counter()
    run.updates = start_epoch * run.steps_per_epoch
    if run.updates:
        run.scheduler.step_update(num_updates=run.updates)
    try:
        for epoch in range(start_epoch, config.epochs):
            record = _train_epoch(run, epoch)
            _end_epoch(run, epoch, record, val, result)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        if run.writer is not None:
            run.writer.close()
    task.eval()
    result.seconds = time.perf_counter() - started
    result.model = eval_module(task, ema=task.has_ema())
    run.ctx.broadcast_buffers(result.model)
    return result


def _setup(
    task: TrainingTask, split: Split, spec: PreprocessSpec, config: TrainConfig, *, desc: str,
    run_dir: str | os.PathLike[str] | None, resume: bool | str | os.PathLike[str], context: DistContext | None,
    teacher_logits: np.ndarray | None,
) -> tuple[_Run, dict[str, Any] | None, Path | None]:
    """Check the arguments, read a state to resume from (before any work), build the run."""
    ctx = context or init_from_env()
    final_size = spec.input_size[0]
    if config.sizes and config.sizes[-1] != final_size:
        raise ConfigError(
            f"the last progressive size must be the export size {final_size}, got sizes {list(config.sizes)}"
        )
    if teacher_logits is not None and config.mixes:
        raise ConfigError("cached teacher logits cannot follow Mixup/CutMix (the cache holds un-mixed images); "
                          "turn off cache_teacher or mixup/cutmix")
    run_path = Path(run_dir) if run_dir is not None else None
    saved, state_path = None, None
    if resume:  # read (and check) the state before any work, so a bad file fails fast
        state_path = Path(resume) if not isinstance(resume, bool) else (run_path / STATE_FILE if run_path else None)
        if state_path is None:
            raise ConfigError("resume needs a run directory or a state file")
        saved, state_path = read_resumable_state(state_path)
    if ctx.is_main:
        log_class_counts(split)
    seed_everything(config.seed)

    task.to(ctx.device)
    if config.freeze_backbone:
        _freeze_backbone(unwrap_model(task.trainable_module))
    optimizer = create_optimizer_v2(
        task.trainable_module, config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )
    if config.ema_decay:
        task.setup_ema(decay=config.ema_decay, use_warmup=True)
    if ctx.enabled:
        task.prepare_distributed(device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    weights = sample_weights(split) if config.balance == "sampler" else None
    sampler = EpochSampler(len(split), seed=config.seed, rank=ctx.rank, world_size=ctx.world_size, weights=weights)
    drop_last = config.mixes or len(sampler) > config.batch_size
    steps_per_epoch = len(sampler) // config.batch_size if drop_last else -(-len(sampler) // config.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(split)} training images make no full batch of {config.batch_size} per process "
                          "(Mixup/CutMix need full batches): lower --batch-size")
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.01, updates_per_epoch=steps_per_epoch, step_on_epochs=False,
    )
    amp_dtype = _amp_dtype(config.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                  num_classes=len(split.classes), multi_label=split.multi_label) if config.mixes else None
    run = _Run(task=task, split=split, spec=spec, config=config, ctx=ctx, desc=desc, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, mixup=mixup, sampler=sampler, amp_dtype=amp_dtype,
               drop_last=drop_last, steps_per_epoch=steps_per_epoch, run_path=run_path, teacher_logits=teacher_logits)
    return run, saved, state_path


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the training data; returns the epoch's record (loss, lr, size, seconds)."""
    config, ctx, task = run.config, run.ctx, run.task
    size = size_for_epoch(config, epoch, run.spec.input_size[0])
    seed_everything(config.seed, epoch + 1, ctx.rank)
    run.sampler.set_epoch(epoch)
    dataset = ImageDataset(run.split, train_transform(run.spec, config, size), extra_targets=run.teacher_logits)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=run.sampler, drop_last=run.drop_last,
                        num_workers=config.workers, pin_memory=ctx.device.type == "cuda",
                        generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch + 1, ctx.rank)))
    task.train()
    if config.freeze_backbone:  # a frozen backbone keeps its normalisation statistics too
        _freeze_norm_statistics(unwrap_model(task.trainable_module))
    losses: list[float] = []
    started = time.perf_counter()
    bar = progress(loader, desc=f"{run.desc} {epoch + 1}/{config.epochs}" + (f" @{size}px" if config.sizes else ""),
                   unit="batch", enabled=ctx.is_main)
    for images, targets in bar:
        losses.append(_step(run, images, targets, epoch))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    record: dict[str, float] = {
        "epoch": epoch + 1, "size": size, "lr": run.optimizer.param_groups[0]["lr"],
        "loss": ctx.mean(float(np.mean(losses))), "seconds": time.perf_counter() - started,
    }
    if dataset.bad:
        record["skipped_images"] = len(dataset.bad)
    return record


def _step(run: _Run, images: torch.Tensor, targets: Any, epoch: int) -> float:
    """One optimizer step; returns the loss."""
    config, ctx, task, optimizer, scaler = run.config, run.ctx, run.task, run.optimizer, run.scaler
    images = images.to(ctx.device, non_blocking=True)
    targets = _to_device(targets, ctx.device)
    if run.mixup is not None:
        images, targets = run.mixup(images, targets)
    with torch.autocast(ctx.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        loss = task(images, targets)["loss"]
    loss_value = loss.item()  # the one host sync per step: logging and the NaN check share it
    _check_finite(loss_value, ctx, run.desc, epoch, run.run_path)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if config.clip_grad:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(task.get_clip_parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if config.clip_grad:
            dispatch_clip_grad(task.get_clip_parameters(), config.clip_grad)
        optimizer.step()
    run.updates += 1
    task.update_ema(step=run.updates)
    run.scheduler.step_update(num_updates=run.updates)
    return loss_value


def _end_epoch(run: _Run, epoch: int, record: dict[str, float], val: tuple[np.ndarray, np.ndarray] | None,
               result: TrainResult) -> None:
    """Validate, then (rank 0) log, save the resumable state, metrics.csv and TensorBoard events."""
    ctx, task, classes = run.ctx, run.task, run.split.classes
    if val is not None:
        record.update(_validate(task, val, classes, ctx, ema=False, prefix="val_"))
        if task.has_ema():
            record.update(_validate(task, val, classes, ctx, ema=True, prefix="val_ema_"))
    result.history.append(record)
    if ctx.is_main:
        logger.info("%s epoch %d/%d: %s", run.desc, epoch + 1, run.config.epochs,
                    ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        if run.run_path is not None:
            save_state(run.run_path / STATE_FILE, task, run.optimizer, run.scaler, run.sampler, run.config,
                       epoch=epoch + 1, updates=run.updates, history=result.history, desc=run.desc)
            _write_csv(run.run_path / "metrics.csv", result.history)
        if run.writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    run.writer.add_scalar(f"{run.desc}/{key}", value, epoch + 1)
            run.writer.flush()
    ctx.barrier()


def _freeze_backbone(model: nn.Module) -> None:
    """Head-only training: every parameter frozen except the classifier's."""
    head = model.get_classifier()
    if not any(True for _ in head.parameters()):
        raise ConfigError(f"{type(model).__name__} has no classifier parameters to train; drop freeze_backbone")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)


def _freeze_norm_statistics(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 AMP needs a CUDA device; on a CPU use amp: bf16 or off")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _to_device(targets: Any, device: torch.device) -> Any:
    if isinstance(targets, (list, tuple)):
        return type(targets)(_to_device(t, device) for t in targets)
    return targets.to(device, non_blocking=True)


def _check_finite(loss: float, ctx: DistContext, desc: str, epoch: int, run_path: Path | None) -> None:
    finite = ctx.all_true(math.isfinite(loss))  # every rank must stop together, or the others hang
    if not finite:
        kept = (
            f"; the last good checkpoint is {run_path / STATE_FILE}"
            if run_path and (run_path / STATE_FILE).is_file()
            else ""
        )
        raise TrainingDivergedError(
            f"{desc}: loss became {loss} in epoch {epoch + 1}; lower the learning rate (--lr), turn on "
            f"gradient clipping (--clip-grad 1.0) or check the data{kept}"
        )


def _validate(task: TrainingTask, val: tuple[np.ndarray, np.ndarray], classes: list[str], ctx: DistContext,
              *, ema: bool, prefix: str) -> dict[str, float]:
    """Each rank scores its shard of the validation set; the logits are gathered before the metrics."""
    batch, targets = val
    model = eval_module(task, ema=ema)
    ctx.broadcast_buffers(model)
    logits = ctx.gather(predict_logits(model, batch[ctx.rank::ctx.world_size], device=ctx.device))
    gathered = ctx.gather(targets[ctx.rank::ctx.world_size])
    evaluation = evaluate_logits(logits, gathered, classes)
    keys = ("top1", "top5", "ece") if "top1" in evaluation.metrics else ("mAP", "f1_macro")
    return {prefix + k: evaluation.metrics[k] for k in keys}


def _write_csv(path: Path, history: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def _tensorboard(run_path: Path, start_epoch: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed: metrics go to metrics.csv only (pip install tensorboard)")
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        return SummaryWriter(str(run_path / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)
