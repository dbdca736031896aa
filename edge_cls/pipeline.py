"""``edge-cls build``: data -> teacher -> student alone and distilled -> artifacts -> benchmark.

Every stage writes into one build directory::

    build/demo/
      data/                      the bundled demo set as PNG ImageFolder splits (demo only)
      checkpoints/               teacher.pt, student_alone.pt, student.pt (edge-cls checkpoints)
      artifacts/<format>-<precision>/   manifest.json + model files, checked against PyTorch
      report.md, report.json, accuracy_latency.png
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._fileio import write_json_atomic, write_text_atomic
from .benchmark import BenchResult, bench_artifact, measure
from .calibration_data import CalibrationSet
from .data import ImageFolderSplit, load_splits, preprocess_split, write_demo_dataset
from .export import ReferenceSet, export_artifacts, resolve_targets, tool_versions
from .models import Checkpoint, ModelRecipe, create_model, predict_logits, spec_for_model
from .report import machine_description, markdown_table, plot_accuracy_latency, text_table
from .train import DistillConfig, TrainConfig, accuracy, classification_task, distillation_task, fit

logger = logging.getLogger(__name__)

DEMO_TEACHER = "vit_convstem_tiny"
DEMO_STUDENT = "mobilenetv3_small_100"
DEMO_INPUT_SIZE = 64


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything ``edge-cls build`` does; the defaults run the offline demo."""

    out_dir: Path = Path("build/demo")
    data_dir: Path | None = None  # train/ val/ test/ ImageFolders; None: the bundled demo set
    teacher: str = DEMO_TEACHER
    teacher_weights: Path | None = None  # weights that already fit the classes: no teacher training
    teacher_pretrained: bool = False  # start the teacher from hub weights, then fine-tune
    student: str = DEMO_STUDENT
    student_pretrained: bool = False
    input_size: int = DEMO_INPUT_SIZE
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=1.5e-3))
    student_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=3e-3))
    distill: DistillConfig = field(default_factory=DistillConfig)
    formats: tuple[str, ...] = ("onnx", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")
    calibration_size: int = 300
    bench_iterations: int = 100
    onnx_exporter: str = "dynamo"


@dataclass
class BuildResult:
    rows: list[BenchResult]
    stage_seconds: dict[str, float]
    report_path: Path
    table: str


def _teacher_kwargs(name: str, input_size: int) -> dict[str, Any]:
    """ViT-style models fix their input size at creation (position embeddings): pass img_size."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    return {"img_size": input_size} if cfg is not None and cfg.fixed_input_size else {}


def dataset_splits(data_dir: Path | None, demo_dir: Path) -> dict[str, ImageFolderSplit]:
    """The user's train/val/test ImageFolders, or the bundled demo set written to ``demo_dir``."""
    return load_splits(Path(data_dir) if data_dir else write_demo_dataset(demo_dir))


def train_model(
    name: str, out: Path, *, data_dir: Path | None, input_size: int, config: TrainConfig, pretrained: bool = False,
    demo_dir: Path = Path("build/demo/data"),
) -> Checkpoint:
    """Train one model on labels alone and save it as an edge-cls checkpoint (``edge-cls train``)."""
    out = Path(out)
    splits = dataset_splits(data_dir, demo_dir)
    classes = splits["train"].classes
    recipe = ModelRecipe(name=name, num_classes=len(classes), kwargs=_teacher_kwargs(name, input_size))
    torch.manual_seed(config.seed)
    model = create_model(recipe, pretrained=pretrained)
    spec = spec_for_model(model, input_size=input_size)
    result = fit(classification_task(model, config), splits["train"], spec, config, desc=name,
                 val=preprocess_split(splits["val"], spec))
    top1 = accuracy(model, *preprocess_split(splits["test"], spec))
    checkpoint = Checkpoint.from_model(model, recipe, spec, classes, test_top1=top1, train_seconds=result.seconds,
                                       train_config=asdict(config))
    checkpoint.save(out)
    return checkpoint


def build(config: BuildConfig) -> BuildResult:
    """Run the whole pipeline and write the report; returns the benchmark rows."""
    targets = resolve_targets(config.formats, config.precisions)  # fail fast on a bad format
    out = Path(config.out_dir)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    splits = dataset_splits(config.data_dir, out / "data")
    classes = splits["train"].classes
    logger.info("data: %s", {name: len(split) for name, split in splits.items()})
    lap("data")

    # Teacher: given weights, or trained (from scratch or from hub weights) on the train split.
    teacher_recipe = ModelRecipe(name=config.teacher, num_classes=len(classes), kwargs=_teacher_kwargs(config.teacher, config.input_size))
    teacher_weights = config.teacher_weights
    torch.manual_seed(config.teacher_train.seed)
    teacher = create_model(teacher_recipe, pretrained=config.teacher_pretrained, weights=teacher_weights)
    teacher_spec = spec_for_model(teacher, input_size=config.input_size)
    teacher_test = preprocess_split(splits["test"], teacher_spec)
    if teacher_weights is None:
        fit(classification_task(teacher, config.teacher_train), splits["train"], teacher_spec,
            config.teacher_train, desc="teacher", val=preprocess_split(splits["val"], teacher_spec))
    teacher.eval()
    teacher_top1 = accuracy(teacher, *teacher_test)
    Checkpoint.from_model(teacher, teacher_recipe, teacher_spec, classes, test_top1=teacher_top1).save(out / "checkpoints" / "teacher.pt")
    logger.info("teacher %s: test top-1 %.4f", config.teacher, teacher_top1)
    lap("teacher")

    # Both students start from the same initial weights, so the comparison isolates distillation.
    student_recipe = ModelRecipe(name=config.student, num_classes=len(classes))
    torch.manual_seed(config.student_train.seed)
    student_alone = create_model(student_recipe, pretrained=config.student_pretrained)
    spec = spec_for_model(student_alone, input_size=config.input_size)
    val = preprocess_split(splits["val"], spec)
    test_batch, test_targets = preprocess_split(splits["test"], spec)
    fit(classification_task(student_alone, config.student_train), splits["train"], spec, config.student_train,
        desc="student alone", val=val)
    alone_top1 = accuracy(student_alone, test_batch, test_targets)
    Checkpoint.from_model(student_alone, student_recipe, spec, classes, test_top1=alone_top1).save(out / "checkpoints" / "student_alone.pt")
    lap("student_alone")

    torch.manual_seed(config.student_train.seed)
    student = create_model(student_recipe, pretrained=config.student_pretrained)
    fit(distillation_task(student, teacher, config.student_train, config.distill), splits["train"], spec,
        config.student_train, desc="distill", val=val)
    student_top1 = accuracy(student.eval(), test_batch, test_targets)
    Checkpoint.from_model(student, student_recipe, spec, classes, test_top1=student_top1).save(out / "checkpoints" / "student.pt")
    lap("distill")

    reference = ReferenceSet.from_model(student, test_batch, test_targets, name="test")
    calibration = CalibrationSet.from_split(splits["train"], spec, size=config.calibration_size)
    exported = export_artifacts(
        student, spec, classes, out / "artifacts", targets, reference=reference, calibration=calibration,
        model_name=config.student, onnx_exporter=config.onnx_exporter,
    )
    lap("export")

    rows = [
        _bench_torch(f"teacher {config.teacher}", teacher, teacher_test, out / "checkpoints" / "teacher.pt", config),
        _bench_torch(f"student alone {config.student}", student_alone, (test_batch, test_targets), out / "checkpoints" / "student_alone.pt", config),
        _bench_torch(f"student KD {config.student}", student, (test_batch, test_targets), out / "checkpoints" / "student.pt", config, reference.logits),
    ]
    for artifact in exported:
        rows.append(bench_artifact(
            artifact.path, data=(test_batch, test_targets), reference_logits=reference.logits,
            iterations=config.bench_iterations, name=f"student KD {artifact.target.name}",
        ))
    lap("benchmark")

    teacher_source = f"loaded from `{teacher_weights}`" if teacher_weights else f"trained here for {config.teacher_train.epochs} epochs"
    report = _write_report(out, config, rows, stages, exported, splits, teacher_source)
    return BuildResult(rows, stages, report, text_table(rows))


def _bench_torch(
    name: str, model: torch.nn.Module, data: tuple[np.ndarray, np.ndarray], checkpoint: Path, config: BuildConfig,
    reference_logits: np.ndarray | None = None,
) -> BenchResult:
    model.eval()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch)).numpy()

    return measure(
        run, data[0], targets=data[1], reference_logits=reference_logits, iterations=config.bench_iterations,
        name=name, backend="pytorch", precision="fp32", runtime_precision="f32", size_bytes=checkpoint.stat().st_size,
    )


def _write_report(
    out: Path, config: BuildConfig, rows: list[BenchResult], stages: dict[str, float], exported: list,
    splits: dict[str, ImageFolderSplit], teacher_source: str,
) -> Path:
    plot = plot_accuracy_latency(rows, out / "accuracy_latency.png", title=f"{config.student} distilled from {config.teacher}")
    total = sum(stages.values())
    lines = [
        "# edge-cls build report",
        "",
        f"Teacher `{config.teacher}`, student `{config.student}` at {config.input_size} px; "
        f"data: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} images, {len(splits['train'].classes)} classes.",
        f"Teacher {teacher_source}. The student was trained alone and distilled with the same budget "
        f"({config.student_train.epochs} epochs, same initial weights; KD temperature {config.distill.temperature}).",
        "Top-1 is on the test split; *agree* is top-1 agreement with the distilled PyTorch student on the same "
        "images; latency is batch 1 after warm-up; *ran as* is the precision the backend reported.",
        "",
        markdown_table(rows),
        "",
        "## Stage wall times",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()],
        f"| total | {total:.1f} |",
        "",
        "## Artifacts",
        "",
        *[f"- `{a.path}`: max logit error vs PyTorch {a.manifest.parity['max_abs_logit_error']:.3g}, "
          f"built in {a.seconds:.1f}s" for a in exported],
        "",
        f"Machine: {machine_description()}.",
        f"Tools: {', '.join(f'{k} {v}' for k, v in tool_versions().items())}.",
    ]
    if plot:
        lines += ["", f"![accuracy vs latency]({plot.name})"]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    write_json_atomic(out / "report.json", {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "rows": [r.to_dict() for r in rows],
        "stage_seconds": stages,
        "machine": machine_description(),
        "tools": tool_versions(),
    })
    return report
