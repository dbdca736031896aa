"""The distillation stage: data -> teacher (loaded or fine-tuned) -> student (distilled, and
optionally trained alone for comparison) -> evaluation, all under one build directory::

    <out>/
      config.yaml                  the resolved config (file + flags)
      checkpoints/                 teacher.pt, student.pt, student_alone.pt (edge-cls checkpoints)
      runs/<stage>/                last.pt (resumable state), metrics.csv, tensorboard/
      evaluation.md, evaluation.json, confusion_<model>.png

``edge-cls distill`` runs this stage; ``edge-cls build`` runs it and then exports and benchmarks.
Under ``torchrun`` every rank trains and only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ._fileio import atomic_path, write_json_atomic, write_text_atomic
from .config import dump_yaml, to_plain
from .data import Split, load_splits, preprocess_split, write_demo_dataset
from .distributed import DistContext, init_from_env
from .errors import CheckpointError, ConfigError
from .evaluate import Evaluation, comparison_table, evaluate_logits, plot_confusion
from .models import (
    Checkpoint, ModelRecipe, create_model, load_backbone_weights, predict_logits, spec_for_model,
)
from .preprocess import PreprocessSpec
from .tasks import DistillConfig, classification_task, distillation_task
from .train import STATE_FILE, TrainConfig, criterion_for, fit

logger = logging.getLogger(__name__)

DEMO_TEACHER = "vit_convstem_tiny"
DEMO_STUDENT = "mobilenetv3_small_100"
DEMO_INPUT_SIZE = 64


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything ``edge-cls build``/``distill`` do; the defaults run the offline demo."""

    out_dir: Path = Path("build/demo")
    data_dir: Path | None = None  # train/ val/ test/ ImageFolders or train/val/test.csv; None: the demo set
    teacher: str = DEMO_TEACHER
    teacher_weights: Path | None = None  # edge-cls checkpoint, or .pth/.safetensors state dict
    teacher_pretrained: bool = False  # start the teacher from hub weights
    teacher_finetune: bool | None = None  # fine-tune on the labels first; None: unless weights fit the classes
    teacher_input_size: int | None = None  # None: input_size
    student: str = DEMO_STUDENT
    student_pretrained: bool = False
    student_weights: Path | None = None  # local weights to start the student from (a head for other classes is replaced)
    input_size: int = DEMO_INPUT_SIZE
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=1.5e-3))
    student_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=3e-3))
    distill: DistillConfig = field(default_factory=DistillConfig)
    compare_alone: bool = True  # also train the student on labels alone, same budget and initial weights
    resume: bool = False  # continue interrupted stages; finished stages are loaded, not retrained
    device: str | None = None  # cpu, cuda; None: CUDA when available
    formats: tuple[str, ...] = ("onnx", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")
    calibration_size: int = 300
    bench_iterations: int = 100
    onnx_exporter: str = "dynamo"


@dataclass
class Trained:
    """A model the stage produced, with what it takes to evaluate and export it."""

    name: str
    model: nn.Module
    recipe: ModelRecipe
    spec: PreprocessSpec
    checkpoint: Path
    seconds: float = 0.0


@dataclass
class DistillOutcome:
    splits: dict[str, Split]
    teacher: Trained
    student: Trained
    student_alone: Trained | None
    evaluations: list[Evaluation]
    stage_seconds: dict[str, float]
    context: DistContext

    @property
    def classes(self) -> list[str]:
        return self.splits["train"].classes

    @property
    def multi_label(self) -> bool:
        return self.splits["train"].multi_label


class StageClock:
    """Wall time per pipeline stage, in order: ``lap(name)`` closes the stage that just ran."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(seconds or {})
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def model_kwargs(name: str, input_size: int) -> dict[str, Any]:
    """ViT-style models fix their input size at creation (position embeddings): pass img_size."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    return {"img_size": input_size} if cfg is not None and cfg.fixed_input_size else {}


def dataset_splits(data_dir: Path | None, demo_dir: Path) -> dict[str, Split]:
    """The user's dataset, or the bundled demo set written to ``demo_dir``."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data {data_dir} is not a directory: pass a root with train/ val/ test/ ImageFolders "
                          "or train.csv/val.csv/test.csv")
    return load_splits(Path(data_dir) if data_dir else write_demo_dataset(demo_dir))


def run_distill(config: BuildConfig, context: DistContext | None = None) -> DistillOutcome:
    """Teacher, distilled student (and the student alone), evaluated side by side on the test split."""
    ctx = context or init_from_env(config.device)
    out = Path(config.out_dir)
    clock = StageClock()
    lap = clock.lap
    _check_before_training(config)
    if config.data_dir is None and ctx.is_main:
        write_demo_dataset(out / "data")  # one writer; the other ranks wait at the barrier
    ctx.barrier()
    splits = dataset_splits(config.data_dir, out / "data")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_yaml(config))
        logger.info("data: %s", {name: len(split) for name, split in splits.items()})
    lap("data")

    teacher = prepare_teacher(config, splits, ctx)
    lap("teacher")

    student_recipe = ModelRecipe(name=config.student, num_classes=len(splits["train"].classes),
                                 kwargs=model_kwargs(config.student, config.input_size))
    alone = None
    if config.compare_alone:
        alone = _train_stage("student_alone", config, splits, student_recipe, config.student_train, ctx,
                             pretrained=config.student_pretrained)
        lap("student_alone")
    student = _train_stage("student", config, splits, student_recipe, config.student_train, ctx,
                           pretrained=config.student_pretrained, teacher=teacher)
    lap("distill")

    evaluations = []
    if ctx.is_main:
        evaluations = write_evaluation(out, [teacher, *([alone] if alone else []), student], splits)
    ctx.barrier()
    lap("evaluate")
    return DistillOutcome(splits, teacher, student, alone, evaluations, clock.seconds, ctx)


def _check_before_training(config: BuildConfig) -> None:
    """Mistakes that would otherwise surface only after the teacher has trained."""
    for name, train, size in (("teacher_train", config.teacher_train, config.teacher_input_size or config.input_size),
                              ("student_train", config.student_train, config.input_size)):
        if train.sizes and train.sizes[-1] != size:
            raise ConfigError(f"{name}.sizes must end at the input size {size}, got {list(train.sizes)}")
    if config.distill.cache_teacher and config.student_train.mixes:
        raise ConfigError("cache_teacher cannot be combined with student mixup/cutmix (the cache holds un-mixed images)")


def prepare_teacher(config: BuildConfig, splits: dict[str, Split], ctx: DistContext) -> Trained:
    """Load the teacher, and fine-tune it on the labels unless its weights already fit the classes."""
    classes = splits["train"].classes
    size = config.teacher_input_size or config.input_size
    weights = Path(config.teacher_weights) if config.teacher_weights else None
    checkpoint = _edge_checkpoint(weights) if weights is not None else None
    if checkpoint is not None:
        if checkpoint.labels != classes:
            if config.teacher_finetune is False:
                raise ConfigError(
                    f"teacher checkpoint {weights} predicts {checkpoint.labels[:5]}... ({len(checkpoint.labels)} classes), "
                    f"not this dataset's {len(classes)} classes; allow fine-tuning (drop --no-teacher-finetune)")
            recipe = ModelRecipe(name=checkpoint.recipe.name, num_classes=len(classes), kwargs=checkpoint.recipe.kwargs)
            model = create_model(recipe)
            load_backbone_weights(model, weights)
            return _finetune_teacher(config, splits, ctx, model, recipe, checkpoint.spec.input_size[0])
        model = checkpoint.build()
        if config.teacher_finetune:
            return _finetune_teacher(config, splits, ctx, model, checkpoint.recipe, checkpoint.spec.input_size[0])
        logger.info("teacher: %s from %s", checkpoint.recipe.name, weights)
        return Trained("teacher", model, checkpoint.recipe, checkpoint.spec, weights)

    recipe = ModelRecipe(name=config.teacher, num_classes=len(classes), kwargs=model_kwargs(config.teacher, size))
    torch.manual_seed(config.teacher_train.seed)
    model = create_model(recipe, pretrained=config.teacher_pretrained and weights is None)
    finetune = config.teacher_finetune
    if weights is not None:
        dropped = load_backbone_weights(model, weights)
        if finetune is None:
            finetune = bool(dropped)  # a new head must be trained; weights that fit are used as they are
        elif finetune is False and dropped:
            raise ConfigError(f"teacher weights {weights} have a classifier for other classes; they need fine-tuning "
                              "on this dataset (drop --no-teacher-finetune)")
    elif finetune is None:
        finetune = True
    if not finetune:
        spec = spec_for_model(model, input_size=size)
        path = Path(config.out_dir) / "checkpoints" / "teacher.pt"
        if ctx.is_main:
            Checkpoint.from_model(model.eval(), recipe, spec, classes).save(path)
        return Trained("teacher", model.eval(), recipe, spec, path)
    return _finetune_teacher(config, splits, ctx, model, recipe, size)


def _finetune_teacher(config: BuildConfig, splits: dict[str, Split], ctx: DistContext, model: nn.Module,
                      recipe: ModelRecipe, size: int) -> Trained:
    return _train_stage("teacher", config, splits, recipe, config.teacher_train, ctx, model=model, input_size=size)


def _edge_checkpoint(path: Path) -> Checkpoint | None:
    """The file as an edge-cls checkpoint, read once; None for anything else (a plain state dict,
    or a bad file that ``load_backbone_weights`` then reports)."""
    if path.suffix == ".safetensors":
        return None
    try:
        return Checkpoint.load(path)
    except CheckpointError:
        return None


def _train_stage(
    name: str, config: BuildConfig, splits: dict[str, Split], recipe: ModelRecipe, train: TrainConfig,
    ctx: DistContext, *, pretrained: bool = False, teacher: Trained | None = None, model: nn.Module | None = None,
    input_size: int | None = None,
) -> Trained:
    """Train one model (on labels, or distilled from ``teacher``) into checkpoints/<name>.pt.

    With ``config.resume`` a finished stage is loaded from its checkpoint and an interrupted one
    continues from runs/<name>/last.pt.
    """
    out = Path(config.out_dir)
    path = out / "checkpoints" / f"{name}.pt"
    run_dir = out / "runs" / name
    if config.resume and path.is_file() and not (run_dir / STATE_FILE).is_file():
        checkpoint = Checkpoint.load(path)
        logger.info("%s: finished earlier, loaded %s", name, path)
        return Trained(name, checkpoint.build(), checkpoint.recipe, checkpoint.spec, path,
                       checkpoint.metrics.get("train_seconds", 0.0))
    size = input_size or config.input_size
    if model is None:
        torch.manual_seed(train.seed)  # the same initial weights for the distilled and the label-only student
        model = create_model(recipe, pretrained=pretrained and config.student_weights is None)
        if config.student_weights is not None:
            load_backbone_weights(model, config.student_weights)
    spec = spec_for_model(model, input_size=size)
    split = splits["train"]
    val = preprocess_split(splits["val"], spec)
    criterion = criterion_for(split, train)
    cached = None
    if teacher is None:
        task = classification_task(model, criterion, multi_label=split.multi_label)
    else:
        # The teacher sees the student's view at its own input size (a fixed-size ViT needs it; a CNN
        # fine-tuned at another size predicts best there, as the cached path computes it).
        task = distillation_task(model, teacher.model, criterion, config.distill, multi_label=split.multi_label,
                                 teacher_size=teacher.spec.input_size)
        if config.distill.cache_teacher:
            cached = cache_teacher_logits(teacher, split, run_dir / "teacher_logits.npy", ctx, reuse=config.resume)
    resume = config.resume and (run_dir / STATE_FILE).is_file()
    result = fit(task, split, spec, train, desc=name, val=val, run_dir=run_dir, resume=resume, context=ctx,
                 teacher_logits=cached)
    trained = result.model.eval()
    test_batch, test_targets = preprocess_split(splits["test"], spec)
    evaluation = evaluate_logits(predict_logits(trained, test_batch), test_targets, split.classes)
    if ctx.is_main:
        Checkpoint.from_model(trained.cpu(), recipe, spec, split.classes, test=evaluation.metrics,
                              test_top1=evaluation.metrics.get("top1", evaluation.metrics.get("mAP")),
                              train_seconds=result.seconds, history=result.history, config=to_plain(config)).save(path)
        (run_dir / STATE_FILE).unlink(missing_ok=True)  # finished: the checkpoint is the record now
    ctx.barrier()
    return Trained(name, trained, recipe, spec, path, result.seconds)


def cache_teacher_logits(teacher: Trained, split: Split, path: Path, ctx: DistContext, *, reuse: bool = False) -> np.ndarray:
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
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, logits)
    logger.info("teacher logits for %d images cached in %.1fs", len(split), time.perf_counter() - started)
    return logits


def write_evaluation(out: Path, models: list[Trained], splits: dict[str, Split]) -> list[Evaluation]:
    """Every model on the test split, side by side: evaluation.md/.json and a confusion PNG each."""
    classes = splits["train"].classes
    evaluations = []
    for trained in models:
        batch, targets = preprocess_split(splits["test"], trained.spec)
        evaluations.append(evaluate_logits(predict_logits(trained.model, batch), targets, classes,
                                           name=f"{trained.name} ({trained.recipe.name})"))
    pictures = []
    for trained, evaluation in zip(models, evaluations):
        png = plot_confusion(evaluation, classes, out / f"confusion_{trained.name}.png")
        if png:
            pictures.append(f"![{trained.name}]({png.name})")
    text = "\n".join([
        "# Evaluation on the test split", "",
        f"{len(splits['test'])} images, {len(classes)} classes. ECE: expected calibration error of the top-1 "
        "confidence (15 bins; lower is better). Per-class recall = per-class accuracy.", "",
        comparison_table(evaluations), "", *pictures,
    ])
    write_text_atomic(out / "evaluation.md", text + "\n")
    write_json_atomic(out / "evaluation.json", [e.to_dict() for e in evaluations])
    return evaluations
