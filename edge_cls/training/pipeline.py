"""``edge-cls build``: the distillation stage (:mod:`edge_cls.training.distill`), then export and benchmark.

Every stage writes into one build directory::

    build/demo/
      data/                      the bundled demo set as PNG ImageFolder splits (demo only)
      config.yaml                the resolved config
      checkpoints/, runs/, evaluation.md, confusion_*.png   (the distillation stage)
      artifacts/<format>-<precision>/   manifest.json + model files, checked against PyTorch
      report.md, report.json, accuracy_latency.png
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._fileio import write_json_atomic, write_text_atomic
from ..benchmark import BenchResult, bench_artifact, measure
from ..calibration_data import CalibrationSet
from ..config import BuildConfig
from ..data import Split, preprocess_split
from ..export import ReferenceSet, export_artifacts, resolve_targets, tool_versions
from ..report import machine_description, markdown_table, plot_accuracy_latency, text_table
from .distill import StageClock, run_distill

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    rows: list[BenchResult]
    stage_seconds: dict[str, float]
    report_path: Path
    table: str


def build(config: BuildConfig) -> BuildResult | None:
    """Run the whole pipeline and write the report; returns the benchmark rows (None on ranks > 0)."""
    targets = resolve_targets(config.formats, config.precisions)  # fail fast on a bad format
    out = Path(config.out_dir)
    outcome = run_distill(config)
    if not outcome.context.is_main:
        return None  # under torchrun only rank 0 exports and benchmarks
    clock = StageClock(outcome.stage_seconds)
    lap, stages = clock.lap, clock.seconds

    splits, teacher, student, alone = outcome.splits, outcome.teacher, outcome.student, outcome.student_alone
    student.model.cpu()
    teacher.model.cpu()
    spec = student.spec
    test_batch, test_targets = preprocess_split(splits["test"], spec)
    teacher_test = preprocess_split(splits["test"], teacher.spec)
    task = "multi_label" if outcome.multi_label else "single_label"
    reference = ReferenceSet.from_model(
        student.model, test_batch, None if outcome.multi_label else test_targets, name="test"
    )
    calibration = CalibrationSet.from_split(splits["train"], spec, size=config.calibration_size)
    exported = export_artifacts(
        student.model, spec, outcome.classes, out / "artifacts", targets, reference=reference, calibration=calibration,
        model_name=config.student, onnx_exporter=config.onnx_exporter, task=task,
    )
    lap("export")

    labels = None if outcome.multi_label else test_targets
    rows = [
        _bench_torch(
            f"teacher {teacher.recipe.name}",
            teacher.model,
            (teacher_test[0], None if outcome.multi_label else teacher_test[1]),
            teacher.checkpoint,
            config,
        )
    ]
    if alone is not None:
        alone.model.cpu()
        rows.append(
            _bench_torch(f"student alone {config.student}", alone.model, (test_batch, labels), alone.checkpoint, config)
        )
    rows.append(_bench_torch(f"student KD {config.student}", student.model, (test_batch, labels), student.checkpoint,
                             config, reference.logits))
    for artifact in exported:
        rows.append(bench_artifact(
            artifact.path, data=(test_batch, labels) if labels is not None else None, reference_logits=reference.logits,
            iterations=config.bench_iterations, name=f"student KD {artifact.target.name}",
        ))
    lap("benchmark")

    teacher_source = (f"loaded from `{config.teacher_weights}`" if teacher.seconds == 0 and config.teacher_weights
                      else f"trained here for {config.teacher_train.epochs} epochs")
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
    splits: dict[str, Split], teacher_source: str,
) -> Path:
    plot = plot_accuracy_latency(
        rows, out / "accuracy_latency.png", title=f"{config.student} distilled from {config.teacher}"
    )
    total = sum(stages.values())
    lines = [
        "# edge-cls build report",
        "",
        f"Teacher `{config.teacher}`, student `{config.student}` at {config.input_size} px; "
        f"data: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} images, "
        f"{len(splits['train'].classes)} classes.",
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
        *[
            f"- `{a.path}`: max logit error vs PyTorch {a.manifest.parity['max_abs_logit_error']:.3g}, "
            f"built in {a.seconds:.1f}s"
            for a in exported
        ],
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
