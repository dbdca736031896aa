"""The training loop: any ``timm.task`` task, one process or many, resumable.

timm ships its loop as a script (``train.py``), not a library function, so the loop is written
here; everything inside it is timm's or torch's: transforms, Mixup/CutMix, ``ModelEmaV3`` (via
the task's ``setup_ema``), ``create_optimizer_v2``, the cosine scheduler with warm-up, gradient
clipping, ``torch.autocast``, DDP through the task's ``prepare_distributed``.

A run directory receives, after every epoch and only from rank 0: ``last.pt`` (model, EMA,
optimizer, scheduler, AMP scaler, sampler and RNG state; written to a temp file and renamed),
``metrics.csv`` and TensorBoard events. ``resume`` continues after the last completed epoch; the
sampler order and every random stream are re-derived from (seed, epoch) at each epoch start, so
a resumed run ends where an uninterrupted one would.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import TrainingTask
from timm.utils import dispatch_clip_grad, unwrap_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._fileio import atomic_path, write_text_atomic
from .data import ImageDataset, Split, class_weights, log_class_counts, sample_weights
from .distributed import DistContext, EpochSampler, init_from_env
from .errors import CheckpointError, ConfigError, EdgeClsError
from .evaluate import evaluate_logits
from .models import predict_logits
from .preprocess import PreprocessSpec
from .tasks import eval_module, label_criterion

logger = logging.getLogger(__name__)

STATE_FORMAT = "edge-cls-train-state"
STATE_VERSION = 1
STATE_FILE = "last.pt"
AMP_MODES = ("auto", "off", "bf16", "fp16")
BALANCE_MODES = ("none", "weighted", "sampler")


class TrainingDivergedError(EdgeClsError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: schedule, augmentation, regularisation, infrastructure."""

    epochs: int = 10
    batch_size: int = 64  # per process
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # any timm.optim name
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.0  # digits and text must not be mirrored; 0.5 suits natural images
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    ema_decay: float = 0.0  # EMA of the weights (e.g. 0.999; 0: off); the EMA model is the result
    clip_grad: float = 0.0  # max gradient norm (0: off)
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, off on CPU; or off, bf16, fp16
    balance: str = "none"  # none, weighted (class-weighted loss), sampler (class-balanced sampling)
    sizes: tuple[int, ...] = ()  # progressive resizing, e.g. (48, 56, 64); the last is the export size
    freeze_backbone: bool = False  # train the classifier head only
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"Mixup/CutMix need an even batch size, got {self.batch_size}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if any(s < 8 for s in self.sizes):
            raise ConfigError(f"progressive sizes must be at least 8 pixels, got {list(self.sizes)}")

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


@dataclass
class TrainResult:
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None  # the trained model (the EMA copy when EMA is on), unwrapped
    resumed_from: int = 0  # epochs already done when the run started


def train_transform(spec: PreprocessSpec, config: TrainConfig, size: int | None = None) -> Any:
    """timm's training transform (RandomResizedCrop, flips, normalise) at ``size`` (default: the spec's)."""
    size_hw = (size, size) if size else spec.input_size
    return create_transform(
        input_size=(3, *size_hw), is_training=True, scale=config.scale, hflip=config.hflip, color_jitter=None,
        interpolation=spec.interpolation, mean=spec.mean, std=spec.std,
    )


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
    ctx = context or init_from_env()
    final_size = spec.input_size[0]
    if config.sizes and config.sizes[-1] != final_size:
        raise ConfigError(f"the last progressive size must be the export size {final_size}, got sizes {list(config.sizes)}")
    if teacher_logits is not None and config.mixes:
        raise ConfigError("cached teacher logits cannot follow Mixup/CutMix (the cache holds un-mixed images); "
                          "turn off cache_teacher or mixup/cutmix")
    run_path = Path(run_dir) if run_dir is not None else None
    saved, state_path = None, None
    if resume:  # read (and check) the state before any work, so a bad file fails fast
        state_path = Path(resume) if not isinstance(resume, bool) else (run_path / STATE_FILE if run_path else None)
        if state_path is None:
            raise ConfigError("resume needs a run directory or a state file")
        saved = read_state(state_path)
    if ctx.is_main:
        log_class_counts(train_split)
    seed_everything(config.seed)

    task.to(ctx.device)
    if config.freeze_backbone:
        _freeze_backbone(unwrap_model(task.trainable_module))
    optimizer = create_optimizer_v2(task.trainable_module, config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    if config.ema_decay:
        task.setup_ema(decay=config.ema_decay, use_warmup=True)
    if ctx.enabled:
        task.prepare_distributed(device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    weights = sample_weights(train_split) if config.balance == "sampler" else None
    sampler = EpochSampler(len(train_split), seed=config.seed, rank=ctx.rank, world_size=ctx.world_size, weights=weights)
    drop_last = config.mixes or len(sampler) > config.batch_size
    steps_per_epoch = len(sampler) // config.batch_size if drop_last else -(-len(sampler) // config.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_split)} training images make no full batch of {config.batch_size} per process "
                          "(Mixup/CutMix need full batches): lower --batch-size")
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.01, updates_per_epoch=steps_per_epoch, step_on_epochs=False,
    )
    amp_dtype = _amp_dtype(config.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                  num_classes=len(train_split.classes), multi_label=train_split.multi_label) if config.mixes else None

    result = TrainResult(seconds=0.0)
    start_epoch = 0
    if saved is not None:
        _restore(saved, state_path, task, optimizer, scheduler, scaler, config)
        start_epoch = min(int(saved["epoch"]), config.epochs)
        result.history = list(saved["history"])[:start_epoch]
        result.resumed_from = start_epoch
        logger.info("%s: resumed from %s after epoch %d of %d", desc, state_path, start_epoch, config.epochs)
    writer = _tensorboard(run_path, start_epoch) if run_path and ctx.is_main else None

    started = time.perf_counter()
    updates = start_epoch * steps_per_epoch
    if updates:
        scheduler.step_update(num_updates=updates)
    try:
        for epoch in range(start_epoch, config.epochs):
            size = size_for_epoch(config, epoch, final_size)
            seed_everything(config.seed, epoch + 1, ctx.rank)
            sampler.set_epoch(epoch)
            dataset = ImageDataset(train_split, train_transform(spec, config, size), extra_targets=teacher_logits)
            loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last,
                                num_workers=config.workers, pin_memory=ctx.device.type == "cuda",
                                generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch + 1, ctx.rank)))
            task.train()
            if config.freeze_backbone:  # a frozen backbone keeps its normalisation statistics too
                _freeze_norm_statistics(unwrap_model(task.trainable_module))
            losses: list[float] = []
            epoch_start = time.perf_counter()
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{config.epochs}" + (f" @{size}px" if config.sizes else ""),
                       leave=False, unit="batch", mininterval=1.0, disable=not ctx.is_main)
            for images, targets in bar:
                images = images.to(ctx.device, non_blocking=True)
                targets = _to_device(targets, ctx.device)
                if mixup is not None:
                    images, targets = mixup(images, targets)
                with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = task(images, targets)["loss"]
                loss_value = loss.item()  # the one host sync per step: logging and the NaN check share it
                _check_finite(loss_value, ctx, desc, epoch, run_path)
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
                updates += 1
                task.update_ema(step=updates)
                scheduler.step_update(num_updates=updates)
                losses.append(loss_value)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            record: dict[str, float] = {
                "epoch": epoch + 1, "size": size, "lr": optimizer.param_groups[0]["lr"],
                "loss": ctx.mean(float(np.mean(losses))), "seconds": time.perf_counter() - epoch_start,
            }
            if dataset.bad:
                record["skipped_images"] = len(dataset.bad)
            if val is not None:
                record.update(_validate(task, val, train_split.classes, ctx, ema=False, prefix="val_"))
                if task.has_ema():
                    record.update(_validate(task, val, train_split.classes, ctx, ema=True, prefix="val_ema_"))
            result.history.append(record)
            if ctx.is_main:
                logger.info("%s epoch %d/%d: %s", desc, epoch + 1, config.epochs,
                            ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
                if run_path is not None:
                    _save_state(run_path / STATE_FILE, task, optimizer, scheduler, scaler, sampler, config,
                                epoch + 1, updates, result.history, desc)
                    _write_csv(run_path / "metrics.csv", result.history)
                if writer is not None:
                    for key, value in record.items():
                        if key != "epoch":
                            writer.add_scalar(f"{desc}/{key}", value, epoch + 1)
                    writer.flush()
            ctx.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        if writer is not None:
            writer.close()
    task.eval()
    result.seconds = time.perf_counter() - started
    result.model = eval_module(task, ema=task.has_ema())
    ctx.broadcast_buffers(result.model)
    return result


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
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
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
    finite = float(math.isfinite(loss))
    if ctx.enabled:  # every rank must stop together, or the others hang in the next all-reduce
        flag = torch.tensor([finite], device=ctx._comm_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = float(flag.item())
    if not finite:
        kept = (f"; the last good checkpoint is {run_path / STATE_FILE}" if run_path and (run_path / STATE_FILE).is_file()
                else "")
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


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
    }
    return state  # CUDA streams need no state: every epoch reseeds them from (seed, epoch, rank)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def _save_state(path: Path, task: TrainingTask, optimizer: Any, scheduler: Any, scaler: Any, sampler: EpochSampler,
                config: TrainConfig, epoch: int, updates: int, history: list[dict[str, float]], desc: str) -> None:
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "desc": desc, "epoch": epoch, "updates": updates,
        "model": unwrap_model(task.get_trainable_module()).state_dict(),
        "ema": task.get_trainable_module(ema=True).state_dict() if task.has_ema() else None,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler.state_dict(), "rng": _rng_state(),
        "config": _plain(asdict(config)), "history": history,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training state file, checked; a missing, truncated or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (start without --resume, or pass the run directory "
                              "that holds last.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many types
        raise CheckpointError(
            f"cannot resume: {path} is unreadable or truncated ({type(e).__name__}: {e}); it was left as it is - "
            "restore a copy, or start the run again without --resume in a new directory"
        ) from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"cannot resume: {path} is not an edge-cls training state (use the run directory's last.pt)")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"cannot resume: {path} has state version {state.get('version')}, expected {STATE_VERSION}")
    return state


def _restore(state: dict[str, Any], path: Path, task: TrainingTask, optimizer: Any, scheduler: Any, scaler: Any,
             config: TrainConfig) -> None:
    changed = sorted(k for k, v in _plain(asdict(config)).items() if state["config"].get(k) != v and k != "epochs")
    if changed:
        logger.warning("resuming %s with a changed config (%s): the run will differ from the original", path, ", ".join(changed))
    if state["epoch"] >= config.epochs:
        logger.info("%s finished all %d epochs before the run stopped: nothing left to train", path, state["epoch"])
    try:
        unwrap_model(task.get_trainable_module()).load_state_dict(state["model"])
        if task.has_ema():
            if state["ema"] is None:
                raise CheckpointError(f"{path} has no EMA weights but this run uses EMA; resume with the same ema_decay")
            task.get_trainable_module(ema=True).load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this model or optimizer ({e})") from e
    # The scheduler is not loaded: its value is a function of the update count (set by the caller),
    # and loading would also bring back the old run length if --epochs was raised.
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])


def _plain(value: Any) -> Any:
    """Tuples to lists, so a config compares equal after a save/load round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
