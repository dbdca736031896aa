"""The distillation stage: data -> teacher (loaded or fine-tuned) -> student (distilled, and
optionally trained alone for comparison) -> evaluation, all under one build directory::

    <out>/
      config.yaml                  the resolved config (file + flags)
      checkpoints/                 teacher.pt, student.pt, student_alone.pt (edge-cls checkpoints)
      runs/<stage>/                last.pt (resumable state), metrics.csv, tensorboard/
      evaluation.md, evaluation.json, confusion_<model>.png

``edge-cls distill`` runs this stage; ``edge-cls build`` runs it and then exports and benchmarks;
``edge-cls finetune-teacher`` runs its teacher part alone. Under ``torchrun`` every rank trains
and only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_cls._fileio import atomic_path, write_json_atomic, write_text_atomic
from edge_cls.data import Split, load_splits, write_demo_dataset
from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.predictions import softmax
from edge_cls.quality.confidence import fit_temperature, plot_reliability
from edge_cls.quality.evaluate import (
    Evaluation,
    comparison_table,
    evaluate_logits,
    expected_calibration_error,
    plot_confusion,
)
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.config import BuildConfig, dump_yaml, to_plain
from edge_cls.training.distributed import DistContext, init_from_env
from edge_cls.training.models import ModelRecipe, create_model, load_backbone_weights, model_kwargs, spec_for_model
from edge_cls.training.pseudo_labels import is_unlabelled_root, pseudo_labelled_splits
from edge_cls.training.stage import StageModel, StagePaths, Trained, split_logits, train_stage

logger = logging.getLogger(__name__)

CLIP_PREFIX = "clip:"  # --kd-model-name clip:ViT-B-32: a CLIP zero-shot teacher over the classes' names


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
        logger.info("stage %s done in %.1fs", name, self.seconds[name])


def dataset_splits(config: BuildConfig, ctx: DistContext) -> dict[str, Split]:
    """The user's dataset (labelled, or unlabelled and labelled by the teacher), or the bundled demo
    set written (by rank 0) to ``<out>/data``."""
    if config.data_dir is not None:
        if not Path(config.data_dir).is_dir():
            raise ConfigError(f"data {config.data_dir} is not a directory: pass a root with train/ val/ test/ "
                              "ImageFolders or train.csv/val.csv/test.csv, or a folder of images with classes.txt")
        if is_unlabelled_root(Path(config.data_dir)):
            return _teacher_labelled(config, ctx)
        return load_splits(config.data_dir)
    demo = Path(config.out_dir) / "data"
    if ctx.is_main:
        write_demo_dataset(demo)  # one writer; the other ranks wait at the barrier
    ctx.barrier()
    return load_splits(demo)


def _teacher_labelled(config: BuildConfig, ctx: DistContext) -> dict[str, Split]:
    from edge_cls.data import _read_classes

    classes = _read_classes(Path(config.data_dir) / "classes.txt")
    knows = config.teacher.startswith(CLIP_PREFIX) or (
        config.teacher_weights is not None and _edge_checkpoint(Path(config.teacher_weights)) is not None)
    if not knows:
        raise ConfigError(f"{config.data_dir} has no labels: the teacher must already know its classes, e.g. "
                          "--kd-model-name clip:ViT-B-32 (with --teacher-weights), or --teacher-weights of an "
                          "edge-cls checkpoint trained on them")
    teacher = prepare_teacher(config, {"train": _ClassesOnly(classes)}, ctx, label_only=True)
    return pseudo_labelled_splits(Path(config.data_dir), teacher.model, teacher.spec, Path(config.out_dir),
                                  write=ctx.is_main)


class _ClassesOnly:
    """The one thing the teacher needs from a split it labels itself: the class names."""

    multi_label = False

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes


def start_run(config: BuildConfig, ctx: DistContext) -> dict[str, Split]:
    """Check the config, load the data and write the resolved config: what every command does first."""
    _check_before_training(config)
    splits = dataset_splits(config, ctx)
    if config.taxonomy is not None:  # a bad taxonomy file fails now, not after training
        from edge_cls.taxonomy import Taxonomy

        Taxonomy.from_file(config.taxonomy, splits["train"].classes)
    if ctx.is_main:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(config.out_dir) / "config.yaml", dump_yaml(config))
        logger.info("data: %s", {name: len(split) for name, split in splits.items()})
    return splits


def run_distill(config: BuildConfig, context: DistContext | None = None) -> DistillOutcome:
    """Teacher, distilled student (and the student alone), evaluated side by side on the test split."""
    ctx = context or init_from_env(config.device)
    out = Path(config.out_dir)
    clock = StageClock()
    splits = start_run(config, ctx)
    clock.lap("data")
    teacher = prepare_teacher(config, splits, ctx)
    clock.lap("teacher")

    recipe = ModelRecipe(name=config.student, num_classes=len(splits["train"].classes),
                         kwargs=model_kwargs(config.student, config.input_size))
    start = StageModel(recipe=recipe, pretrained=config.student_pretrained, weights=config.student_weights,
                       input_size=config.input_size)
    record = to_plain(config)
    alone = None
    if config.compare_alone:
        alone = train_stage(
            "student_alone",
            start,
            splits,
            config.student_train,
            StagePaths.in_build(out, "student_alone"),
            ctx,
            resume=config.resume,
            record=record,
        )
        clock.lap("student_alone")
    student = train_stage("student", start, splits, config.student_train, StagePaths.in_build(out, "student"), ctx,
                          teacher=teacher, distill=config.distill, resume=config.resume, record=record)
    clock.lap("distill")

    evaluations = []
    if ctx.is_main:
        evaluations = write_evaluation(out, [teacher, *([alone] if alone else []), student], splits)
    ctx.barrier()
    clock.lap("evaluate")
    return DistillOutcome(splits, teacher, student, alone, evaluations, clock.seconds, ctx)


def _check_before_training(config: BuildConfig) -> None:
    """Mistakes that would otherwise surface only after the teacher has trained."""
    for name, train, size in (("teacher_train", config.teacher_train, config.teacher_input_size or config.input_size),
                              ("student_train", config.student_train, config.input_size)):
        if train.sizes and train.sizes[-1] != size:
            raise ConfigError(f"{name}.sizes must end at the input size {size}, got {list(train.sizes)}")
    if config.distill.cache_teacher and config.student_train.mixes:
        raise ConfigError(
            "cache_teacher cannot be combined with student mixup/cutmix (the cache holds un-mixed images)"
        )


def prepare_teacher(config: BuildConfig, splits: dict[str, Split], ctx: DistContext, *,
                    paths: StagePaths | None = None, label_only: bool = False) -> Trained:
    """Load the teacher, and fine-tune it on the labels unless its weights already fit the classes
    (``teacher_finetune`` True forces fine-tuning, False forbids it). ``clip:<model>`` is a CLIP
    zero-shot classifier over the classes' names (never fine-tuned). ``label_only``: the teacher
    is wanted to label unlabelled data, so it must know the classes as it is."""
    paths = paths or StagePaths.in_build(Path(config.out_dir), "teacher")
    classes = splits["train"].classes
    if config.teacher.startswith(CLIP_PREFIX):
        return _clip_teacher(config, classes, paths, ctx)
    weights = Path(config.teacher_weights) if config.teacher_weights else None
    checkpoint = _edge_checkpoint(weights) if weights is not None else None
    if checkpoint is not None:
        if checkpoint.labels == classes and not config.teacher_finetune:
            logger.info("teacher: %s from %s", checkpoint.recipe.name, weights)
            return Trained("teacher", checkpoint.build(), checkpoint.recipe, checkpoint.spec, weights)
        if checkpoint.labels != classes and (config.teacher_finetune is False or label_only):
            raise ConfigError(
                f"teacher checkpoint {weights} predicts {checkpoint.labels[:5]}... ({len(checkpoint.labels)} classes), "
                f"not this dataset's {len(classes)} classes; allow fine-tuning (drop --no-teacher-finetune)")
        recipe = ModelRecipe(name=checkpoint.recipe.name, num_classes=len(classes), kwargs=checkpoint.recipe.kwargs)
        model = checkpoint.build() if checkpoint.labels == classes else _with_backbone(recipe, weights)
        return _finetune(config, splits, ctx, model, recipe, checkpoint.spec.input_size[0], paths)

    size = config.teacher_input_size or config.input_size
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
    if finetune:
        return _finetune(config, splits, ctx, model, recipe, size, paths)
    spec = spec_for_model(model, input_size=size)
    if ctx.is_main:
        Checkpoint.from_model(model.eval(), recipe, spec, classes).save(paths.checkpoint)
    return Trained("teacher", model.eval(), recipe, spec, paths.checkpoint)


def _clip_teacher(config: BuildConfig, classes: list[str], paths: StagePaths, ctx: DistContext) -> Trained:
    """A CLIP zero-shot classifier over the classes' names; its weights: ``teacher_weights`` (a hub
    tag or a local file)."""
    from edge_cls.training.clip import zero_shot_classifier

    name = config.teacher[len(CLIP_PREFIX):]
    if config.teacher_finetune:
        raise ConfigError("a CLIP teacher is used zero-shot: drop --teacher-finetune")
    torch.manual_seed(config.teacher_train.seed)  # without weights, the same random tower every time it is built
    model, spec = zero_shot_classifier(name, str(config.teacher_weights) if config.teacher_weights else None, classes)
    if ctx.is_main:
        paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths.checkpoint) as tmp:
            torch.save(model.state_dict(), tmp)  # the exact teacher, for the record (rebuilt from text on resume)
    recipe = ModelRecipe(name=config.teacher, num_classes=len(classes))
    return Trained("teacher", model, recipe, spec, paths.checkpoint)


def _with_backbone(recipe: ModelRecipe, weights: Path) -> torch.nn.Module:
    model = create_model(recipe)
    load_backbone_weights(model, weights)
    return model


def _finetune(config: BuildConfig, splits: dict[str, Split], ctx: DistContext, model: torch.nn.Module,
              recipe: ModelRecipe, size: int, paths: StagePaths) -> Trained:
    start = StageModel(recipe=recipe, model=model, input_size=size)
    return train_stage("teacher", start, splits, config.teacher_train, paths, ctx, resume=config.resume,
                       record=to_plain(config))


def finetune_teacher(config: BuildConfig, paths: StagePaths | None = None) -> Trained:
    """``edge-cls finetune-teacher``: the teacher part of :func:`run_distill`, always fine-tuned."""
    from dataclasses import replace

    ctx = init_from_env(config.device)
    config = replace(config, teacher_finetune=True)
    splits = start_run(config, ctx)
    return prepare_teacher(config, splits, ctx, paths=paths)


def _edge_checkpoint(path: Path) -> Checkpoint | None:
    """The file as an edge-cls checkpoint, read once; None for anything else (a plain state dict,
    or a bad file that ``load_backbone_weights`` then reports)."""
    if path.suffix == ".safetensors":
        return None
    try:
        return Checkpoint.load(path)
    except CheckpointError:
        return None


def write_evaluation(out: Path, models: list[Trained], splits: dict[str, Split]) -> list[Evaluation]:
    """Every model on the test split, side by side: evaluation.md/.json and a confusion PNG each."""
    classes = splits["train"].classes
    evaluations = []
    pictures = []
    for trained in models:
        logits, targets = split_logits(trained.model, splits["test"], trained.spec)  # batch by batch
        evaluation = evaluate_logits(logits, targets, classes, name=f"{trained.name} ({trained.recipe.name})")
        if targets.ndim == 1:  # temperature fitted on the validation split, judged on the test split
            temperature = fit_temperature(*split_logits(trained.model, splits["val"], trained.spec))
            evaluation.metrics["temperature"] = temperature
            evaluation.metrics["ece_calibrated"] = expected_calibration_error(softmax(logits, temperature), targets)
            if trained.name == "student":
                png = plot_reliability(logits, targets, temperature, out / "reliability_student.png",
                                       title="distilled student, test split: raw and temperature-scaled")
                pictures += [f"![reliability]({png.name})"] if png else []
        evaluations.append(evaluation)
    for trained, evaluation in zip(models, evaluations):
        png = plot_confusion(evaluation, classes, out / f"confusion_{trained.name}.png")
        if png:
            pictures.append(f"![{trained.name}]({png.name})")
    text = "\n".join([
        "# Evaluation on the test split", "",
        f"{len(splits['test'])} images, {len(classes)} classes. ECE: expected calibration error of the top-1 "
        "confidence (15 bins; lower is better); ece_calibrated: the same after temperature scaling fitted on the "
        "validation split (what the artifacts apply). Per-class recall = per-class accuracy.", "",
        comparison_table(evaluations), "", *pictures,
    ])
    write_text_atomic(out / "evaluation.md", text + "\n")
    write_json_atomic(out / "evaluation.json", [e.to_dict() for e in evaluations])
    return evaluations
