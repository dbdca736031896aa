"""The ``edge-cls`` command line: build, distill, finetune-teacher, export, predict, bench, info.

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

from .errors import EdgeClsError

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

    from .train_cli import add_training_parsers

    add_training_parsers(sub, _add_target_args)

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


def _add_target_args(parser: argparse.ArgumentParser, default: object = "given") -> None:
    """--formats/--precisions; ``default=None`` leaves them unset so a config file can decide."""
    formats = ["onnx", "openvino"] if default == "given" else None
    precisions = ["fp32", "int8"] if default == "given" else None
    parser.add_argument("--formats", nargs="+", default=formats, help="onnx, openvino, tensorrt (default: onnx openvino)")
    parser.add_argument("--precisions", nargs="+", default=precisions, help="fp32, fp16, int8 (default: fp32 int8)")


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
        "files:      " + ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in manifest.files),
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
