"""Does distillation beat training on labels alone? Same student, same budget, several seeds.

On the bundled demo set (4,000 / 500 / 500 MNIST digits): one teacher is trained once (or
loaded with --teacher-weights); then for every seed the student is trained on labels alone and
distilled from that teacher, from the same initial weights, with the same schedule and data
order (``edge-cls distill`` with the teacher's checkpoint, one build directory per seed). The
table gives test top-1 mean and spread (sample standard deviation, min-max) of both, the
teacher's, and the student/teacher latency ratio (batch 1, ONNX Runtime FP32 artifacts and
PyTorch eager, measured side by side in one run).

    python benchmarks/kd_vs_labels.py [--seeds 0 1 2] [--teacher-epochs 30] [--student-epochs 6] \\
        [--name kd_vs_labels] [--mixup 0.0] [--ema-decay 0] [--temperature 4] [--task-weight 1]

Per-seed results are kept in build/<name>/seed<N>/ and reused on a rerun, so an interrupted
benchmark continues. Writes benchmarks/results/<name>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.data import load_splits, preprocess_split, write_demo_dataset
from edge_cls.measure.machine import machine_description
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.config import BuildConfig, DistillConfig, to_plain
from edge_cls.training.distill import finetune_teacher, run_distill

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--teacher-weights", type=Path, help="an edge-cls teacher checkpoint; skips teacher training")
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--ema-decay", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--task-weight", type=float, default=1.0, help="weight of the label loss in KD (0: KD only)")
    parser.add_argument("--name", default="kd_vs_labels")
    parser.add_argument(
        "--reuse-alone",
        metavar="NAME",
        help="take the labels-only students from build/NAME (same seeds and student schedule): only KD changes",
    )
    parser.add_argument("--iterations", type=int, default=200, help="timed batch-1 runs for the latency ratio")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edge_cls").setLevel(logging.INFO)

    work = Path("build") / args.name
    data = write_demo_dataset(work / "data")
    base = BuildConfig(out_dir=work, data_dir=data, compare_alone=True)
    started = time.perf_counter()
    teacher_path = teacher_checkpoint(args, base, work)
    teacher_metrics = Checkpoint.load(teacher_path).metrics
    teacher_seconds = teacher_metrics.get("train_seconds", 0.0)
    teacher_epochs = len(teacher_metrics.get("history", [])) or args.teacher_epochs

    student_train = replace(base.student_train, epochs=args.student_epochs, mixup=args.mixup, ema_decay=args.ema_decay)
    distill = DistillConfig(
        temperature=args.temperature, distill_weight=args.distill_weight, task_weight=args.task_weight
    )
    runs = [student_run(args, base, work, teacher_path, student_train, distill, seed) for seed in args.seeds]
    latency = measure_latency(teacher_path, work / f"seed{args.seeds[0]}" / "checkpoints" / "student.pt",
                              work / "latency", args.iterations)
    result = {
        "config": {
            "teacher": str(teacher_path),
            "teacher_epochs": teacher_epochs,
            "teacher_train_seconds": teacher_seconds,
            "student_train": to_plain(student_train),
            "distill": to_plain(distill),
            "seeds": args.seeds,
        },
        "runs": runs,
        "latency": latency,
        "machine": machine_description(),
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(args.name, result)
    return 0


def teacher_checkpoint(args: argparse.Namespace, base: BuildConfig, work: Path) -> Path:
    """The teacher given, or one trained (once: later runs reuse it)."""
    teacher_path = args.teacher_weights or work / "teacher" / "checkpoints" / "teacher.pt"
    if not teacher_path.is_file():
        teacher_cfg = replace(base, out_dir=work / "teacher", resume=True,
                              teacher_train=replace(base.teacher_train, epochs=args.teacher_epochs))
        finetune_teacher(teacher_cfg)
    return teacher_path


def student_run(args: argparse.Namespace, base: BuildConfig, work: Path, teacher_path: Path, student_train: Any,
                distill: DistillConfig, seed: int) -> dict[str, Any]:
    """One seed: the student alone and the distilled student, same initial weights."""
    out = work / f"seed{seed}"
    if args.reuse_alone:
        source = Path("build") / args.reuse_alone / f"seed{seed}" / "checkpoints" / "student_alone.pt"
        target = out / "checkpoints" / "student_alone.pt"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    config = replace(base, out_dir=out, teacher_weights=teacher_path, resume=True, distill=distill,
                     student_train=replace(student_train, seed=seed))
    outcome = run_distill(config)
    metrics = {e.name.split(" ")[0]: e.metrics for e in outcome.evaluations}
    seconds = {
        "alone": outcome.student_alone.seconds,
        "kd": outcome.student.seconds,
    }  # training, from the checkpoints
    run = {"seed": seed, "teacher": metrics["teacher"]["top1"], "alone": metrics["student_alone"]["top1"],
           "kd": metrics["student"]["top1"], "seconds": seconds, "ece": {k: v["ece"] for k, v in metrics.items()}}
    print(f"seed {seed}: teacher {run['teacher']:.4f}, alone {run['alone']:.4f}, KD {run['kd']:.4f}",
          flush=True)
    return run


def measure_latency(teacher: Path, student: Path, work: Path, iterations: int) -> dict[str, dict[str, float]]:
    """Batch-1 p50 of teacher and student, ONNX Runtime FP32 and PyTorch eager, in one run."""
    import torch

    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.measure.latency import bench_artifact, measure

    splits = load_splits(work.parent / "data")
    out: dict[str, dict[str, float]] = {}
    for role, path in (("teacher", teacher), ("student", student)):
        checkpoint = Checkpoint.load(path)
        model = checkpoint.build()
        batch, targets = preprocess_split(splits["test"], checkpoint.spec)
        artifact = export_artifacts(model, checkpoint.spec, checkpoint.labels, work / role,
                                    resolve_targets(["onnx"], ["fp32"]),
                                    reference=ReferenceSet.from_model(model, batch[:64], targets[:64]),
                                    model_name=checkpoint.recipe.name)[0]
        ort = bench_artifact(artifact.path, data=(batch, targets), iterations=iterations, name=role)

        def run(x: np.ndarray, model: torch.nn.Module = model) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        eager = measure(run, batch, targets=targets, iterations=iterations, name=role, backend="pytorch",
                        precision="fp32", runtime_precision="f32", size_bytes=path.stat().st_size)
        out[role] = {"model": checkpoint.recipe.name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "onnxruntime_p50_ms": ort.p50_ms, "pytorch_p50_ms": eager.p50_ms}
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def latency_lines(result: dict) -> list[str]:
    runs, latency, cfg = result["runs"], result["latency"], result["config"]
    ort_ratio = latency["student"]["onnxruntime_p50_ms"] / latency["teacher"]["onnxruntime_p50_ms"]
    eager_ratio = latency["student"]["pytorch_p50_ms"] / latency["teacher"]["pytorch_p50_ms"]
    return [
        "Latency, batch 1, p50, same run:",
        "",
        "| model | ONNX Runtime FP32 ms | PyTorch eager ms |",
        "|---|---|---|",
        *[
            f"| {role} {latency[role]['model']} | {latency[role]['onnxruntime_p50_ms']:.3f} | {latency[role]['pytorch_p50_ms']:.3f} |"
            for role in ("teacher", "student")
        ],
        f"| student / teacher | {ort_ratio:.2f} | {eager_ratio:.2f} |",
        "",
        f"Training time per student run: labels only {statistics.fmean(r['seconds']['alone'] for r in runs):.0f} s, "
        f"KD {statistics.fmean(r['seconds']['kd'] for r in runs):.0f} s; the teacher trained for {cfg['teacher_train_seconds']:.0f} s.",
    ]


def write_results(name: str, result: dict) -> None:
    runs, latency = result["runs"], result["latency"]
    stats = {key: summary([r[key] for r in runs]) for key in ("teacher", "alone", "kd")}
    gains = [r["kd"] - r["alone"] for r in runs]
    result["summary"] = {**stats, "kd_minus_alone": summary(gains)}
    cfg = result["config"]
    st = cfg["student_train"]
    student_name, teacher_name = latency["student"]["model"], latency["teacher"]["model"]

    def pct(s: dict[str, float]) -> str:
        if s["min"] == s["max"]:
            return f"{100 * s['mean']:.2f}% (one model for every seed)"
        return f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"

    lines = [
        f"# KD versus labels only: {student_name} student, {teacher_name} teacher",
        "",
        f"Demo digits (4,000 train / 500 val / 500 test), {st['epochs']} student epochs (lr {st['lr']}, batch "
        f"{st['batch_size']}, mixup {st['mixup']}, EMA {st['ema_decay']}), KD temperature {cfg['distill']['temperature']}, "
        f"KD weight {cfg['distill']['distill_weight']}, task weight {cfg['distill']['task_weight']}; teacher trained once for "
        f"{cfg['teacher_epochs']} epochs. Seeds {cfg['seeds']}: each seed sets the student's initial weights, data order "
        "and augmentation, identical for the two students of that seed. Test top-1, mean ± sample std (min-max).",
        "",
        "| model | test top-1 |",
        "|---|---|",
        f"| teacher {teacher_name} ({latency['teacher']['params_m']:.1f}M params) | {pct(stats['teacher'])} |",
        f"| student {student_name} ({latency['student']['params_m']:.1f}M), labels only | {pct(stats['alone'])} |",
        f"| student {student_name}, distilled | {pct(stats['kd'])} |",
        f"| KD minus labels only (paired by seed) | {100 * statistics.fmean(gains):+.2f} pts ± {100 * result['summary']['kd_minus_alone']['std']:.2f} |",
        "",
        "Per seed:",
        "",
        "| seed | teacher | labels only | KD | KD - labels |",
        "|---|---|---|---|---|",
        *[
            f"| {r['seed']} | {100 * r['teacher']:.1f}% | {100 * r['alone']:.1f}% | {100 * r['kd']:.1f}% | "
            f"{100 * (r['kd'] - r['alone']):+.1f} |"
            for r in runs
        ],
        "",
        *latency_lines(result),
        f"Machine: {result['machine']}.",
        "",
        f"![per-seed accuracy]({name}.png)",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(name, runs, stats)
    print("\n".join(lines))


def plot(name: str, runs: list[dict], stats: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = [("teacher", "teacher"), ("alone", "student, labels only"), ("kd", "student, KD")]
    for x, (key, _label) in enumerate(keys):
        values = [100 * r[key] for r in runs]
        ax.scatter([x] * len(values), values, color=f"C{x}", zorder=3)
        ax.errorbar(x + 0.15, 100 * stats[key]["mean"], yerr=100 * stats[key]["std"], fmt="_", color="black", capsize=6,
                    markersize=14)
    for r in runs:
        ax.plot([1, 2], [100 * r["alone"], 100 * r["kd"]], color="gray", alpha=0.5, lw=1)
    ax.set_xticks(range(len(keys)), [label for _, label in keys])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("same student, same budget: per seed (dots), mean ± std (bars)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
