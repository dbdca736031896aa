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

from edge_cls._fileio import write_json_atomic, write_text_atomic
from edge_cls.calibration_data import CalibrationSet
from edge_cls.data import Split, preprocess_split
from edge_cls.export import (
    AcceptanceRule,
    ReferenceSet,
    SearchSettings,
    export_artifacts,
    resolve_targets,
    tool_versions,
)
from edge_cls.export.artifacts import ExportedArtifact
from edge_cls.export.embeddings import embedding_settings
from edge_cls.export.qad import TuningData
from edge_cls.measure.latency import BenchResult, bench_artifact, measure
from edge_cls.measure.machine import machine_description
from edge_cls.measure.tables import markdown_table, search_markdown, text_table
from edge_cls.quality.confidence_report import confidence_section
from edge_cls.quality.plots import plot_accuracy_latency
from edge_cls.quality.taxonomy_suggest import build_report_section
from edge_cls.taxonomy import Taxonomy
from edge_cls.training.config import BuildConfig
from edge_cls.training.distill import DistillOutcome, StageClock, run_distill

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    rows: list[BenchResult]
    stage_seconds: dict[str, float]
    report_path: Path
    table: str


def build(config: BuildConfig) -> BuildResult | None:
    """Run the whole pipeline and write the report; returns the benchmark rows (None on ranks > 0)."""
    targets = resolve_targets(config.formats, config.precisions, deferred=config.defer_choice)  # fail fast...
    search = search_settings(config)  # ...a bad recipe name or bar
    out = Path(config.out_dir)
    outcome = run_distill(config)
    if not outcome.context.is_main:
        return None  # under torchrun only rank 0 exports and benchmarks
    clock = StageClock(outcome.stage_seconds)
    outcome.student.model.cpu()
    outcome.teacher.model.cpu()
    exported = _export(config, outcome, targets, search)
    clock.lap("export")
    rows = _benchmark(config, outcome, exported)
    clock.lap("benchmark")
    test_batch, test_targets = preprocess_split(outcome.splits["test"], outcome.student.spec)
    confidence = confidence_section(Path(config.out_dir), [a.path for a in exported], test_batch, test_targets)
    confidence += build_report_section(out, exported[0].path, outcome.splits) if exported else []
    teacher = outcome.teacher
    teacher_source = (f"loaded from `{config.teacher_weights}`" if teacher.seconds == 0 and config.teacher_weights
                      else f"trained here for {config.teacher_train.epochs} epochs")
    report = _write_report(out, config, rows, clock.seconds, exported, outcome.splits, teacher_source, confidence)
    return BuildResult(rows, clock.seconds, report, text_table(rows))


def search_settings(config: BuildConfig) -> SearchSettings:
    """The precision search of a build: the config's bar and recipes (checked here, before any
    training); quantization-aware distillation always runs (bounded by ``qad_seconds``), so the
    report shows what it recovers."""
    from edge_cls.cli.export import distillation

    return SearchSettings(rule=AcceptanceRule(max_drop=config.max_drop), accept_drop=config.accept_drop,
                          only=config.recipes or None, **distillation(config.qad_seconds, always=True))


def _tuning(outcome: DistillOutcome) -> TuningData:
    """What quantization-aware distillation fine-tunes on in a build: training images, with the float
    student's soft targets (added by the distillation) and the teacher's, averaged."""
    split, student, teacher = outcome.splits["train"], outcome.student, outcome.teacher
    teacher_model = teacher.model.eval()

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [split.paths[i] for i in rng.integers(0, len(split), n)]
        with torch.no_grad():
            logits = teacher_model(torch.from_numpy(np.stack([teacher.spec(p) for p in paths]))).float().numpy()
        return np.stack([student.spec(p) for p in paths]), logits

    return TuningData(sample, f"{len(split)} training images, the float student's and {teacher.recipe.name}'s "
                              "soft targets")


def _export(config: BuildConfig, outcome: DistillOutcome, targets: list,
            search: SearchSettings) -> list[ExportedArtifact]:
    """Calibrate on the training split, choose on the validation split (never the calibration
    images), export every format: what ships is measured, not assumed."""
    student, splits = outcome.student, outcome.splits
    spec = student.spec
    val_batch, val_targets = preprocess_split(splits["val"], spec)
    check = ReferenceSet.from_model(student.model, val_batch, val_targets, name="val")
    calibration = CalibrationSet.from_split(
        splits["train"], spec, size=config.calibration_size, cache_dir=Path(config.out_dir) / "cache",
        augment_to=config.calibration_size if config.calib_augment else 0,
    )
    common = dict(reference=check, calibration=calibration, model_name=config.student,
                  onnx_exporter=config.onnx_exporter, task="multi_label" if outcome.multi_label else "single_label",
                  search=search, taxonomy=Taxonomy.from_file(config.taxonomy, outcome.classes) if config.taxonomy
                  else None, tuning=None if outcome.multi_label else _tuning(outcome),
                  embeddings=embedding_settings(config.embedding_dims), min_precision=config.min_precision)
    if config.defer_choice:  # the device times and chooses: `edge-cls choose <output>/bundle` there
        from edge_cls.export.bundle_writer import export_bundle

        export_bundle(student.model, spec, outcome.classes, Path(config.out_dir) / "bundle", targets, **common)
        return []
    return export_artifacts(student.model, spec, outcome.classes, Path(config.out_dir) / "artifacts", targets,
                            **common)


def _benchmark(config: BuildConfig, outcome: DistillOutcome, exported: list[ExportedArtifact]) -> list[BenchResult]:
    """Teacher, students and shipped artifacts on the test split: accuracy, agreement, latency."""
    splits, teacher, student, alone = outcome.splits, outcome.teacher, outcome.student, outcome.student_alone
    test_batch, test_targets = preprocess_split(splits["test"], student.spec)
    teacher_batch, teacher_targets = preprocess_split(splits["test"], teacher.spec)
    labels = None if outcome.multi_label else test_targets
    reference = ReferenceSet.from_model(student.model, test_batch, labels, name="test")
    rows = [_bench_torch(f"teacher {teacher.recipe.name}", teacher.model,
                         (teacher_batch, None if outcome.multi_label else teacher_targets), teacher.checkpoint, config)]
    if alone is not None:
        alone.model.cpu()
        rows.append(_bench_torch(f"student alone {config.student}", alone.model, (test_batch, labels),
                                 alone.checkpoint, config))
    rows.append(_bench_torch(f"student KD {config.student}", student.model, (test_batch, labels), student.checkpoint,
                             config, reference.logits))
    for artifact in exported:
        rows.append(bench_artifact(
            artifact.path, data=(test_batch, labels) if labels is not None else None, reference_logits=reference.logits,
            iterations=config.bench_iterations, name=f"student KD {artifact.path.name}",
        ))
    return rows


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
    out: Path, config: BuildConfig, rows: list[BenchResult], stages: dict[str, float],
    exported: list[ExportedArtifact], splits: dict[str, Split], teacher_source: str, confidence: list[str],
) -> Path:
    plot = plot_accuracy_latency(rows, out / "accuracy_latency.png",
                                 title=f"{config.student} distilled from {config.teacher}")
    lines = [
        "# edge-cls build report", "",
        f"Teacher `{config.teacher}`, student `{config.student}` at {config.input_size} px; "
        f"data: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} images, "
        f"{len(splits['train'].classes)} classes.",
        f"Teacher {teacher_source}. The student was trained alone and distilled with the same budget "
        f"({config.student_train.epochs} epochs, same initial weights; KD temperature {config.distill.temperature}).",
        "Top-1 is on the test split; *agree* is top-1 agreement with the distilled PyTorch student on the same "
        "images; latency is batch 1 after warm-up, each row timed on its own; *ran as* is the precision the "
        "backend reported. The precision search below times the candidates round-robin in one run: compare "
        "speeds there.", "",
        markdown_table(rows), "",
        *_search_section(exported),
        *confidence,
        "## Stage wall times", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()],
        f"| total | {sum(stages.values()):.1f} |", "",
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
        "search": {a.path.name: a.manifest.search for a in exported},
        "stage_seconds": stages,
        "machine": machine_description(),
        "tools": tool_versions(),
    })
    return report


def _search_section(exported: list[ExportedArtifact]) -> list[str]:
    lines = ["## Precision search", "",
             "Every candidate was built, checked on the validation split (never the calibration images) and "
             "timed round-robin, batch 1, in one run on this machine.", ""]
    for artifact in exported:
        m = artifact.manifest
        lines += [f"### `{artifact.path.name}`: {m.precision} ({m.recipe}, ran as {m.runtime_precision})"
                  + (" - DROP ACCEPTED" if m.accepted_drop else ""), ""]
        lines += search_markdown(m.search or {}) + [""] + _distilled_lines(m.search or {})
    return lines


def _distilled_lines(search: dict) -> list[str]:
    """What quantization-aware distillation did and what its INT8 artifact measured, in one paragraph."""
    fp32 = next((r for r in search.get("candidates", []) if r.get("precision") == "fp32"), None)
    lines = []
    for row in search.get("candidates", []):
        if "qad_steps" not in row or fp32 is None or row.get("error"):
            continue
        lines += [f"Quantization-aware distillation (`{row['recipe']}`): {row['qad_steps']} steps in "
                  f"{row['qad_seconds']:.0f} s on {row['qad_data']}, KL {row['qad_loss_first']:.4g} -> "
                  f"{row['qad_loss_last']:.4g}; its INT8 artifact: expected drop {row['expected_drop']:.2f} pts "
                  f"[{row['drop_low']:.2f}, {row['drop_high']:.2f}], {row['flips']} flips, "
                  f"{row['p50_ms'] / fp32['p50_ms']:.2f}x FP32 p50 ({row['verdict']}).", ""]
    return lines
