"""``edge-cls predict``, ``bench`` and ``info``: what a device-side user runs on artifacts.

Only the core and one runtime are imported: these commands work with ``edge-cls[onnxruntime]``
or ``edge-cls[openvino]`` alone, without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import options

EXIT_ERROR = 1


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k predictions of an artifact for image files")
    p.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    options.add(p, "topk", default=5, note="default: 5")
    options.add(p, "batch_size", default=8, note="default: 8")
    options.add_all(p, "backend", "json")
    p.set_defaults(func=_cmd_predict)

    bench = sub.add_parser("bench", help="latency, throughput, size (and accuracy) of artifacts")
    bench.add_argument("artifacts", nargs="+", type=Path, help="artifact directories")
    options.add(bench, "data_dir", note="or one labelled split directory: top-1 is measured on it")
    options.add(bench, "split", default="test", note="default: test")
    options.add(bench, "bench_iterations", default=100, note="default: 100")
    options.add(bench, "batch_size", default=8, note="throughput batch; default: 8")
    options.add_all(bench, "backend", "json")
    bench.set_defaults(func=_cmd_bench)

    info = sub.add_parser("info", help="what an artifact is and how it was checked")
    info.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(info, "json")
    info.set_defaults(func=_cmd_info)


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..runtimes import load

    backend = {"backend": args.backend} if args.backend else {}
    with load(args.artifact, **backend) as classifier:
        results = classifier.predict_batch([str(p) for p in args.images], k=args.topk, batch_size=args.batch_size)
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
    from ..benchmark import bench_artifact
    from ..report import machine_description, text_table

    rows = []
    for artifact in args.artifacts:
        data = None
        backend = {"backend": args.backend} if args.backend else {}
        if args.data_dir:
            from ..data import labelled_split, preprocess_split
            from ..manifest import load_manifest

            manifest = load_manifest(artifact)
            split = labelled_split(args.data_dir, split=args.split, classes=manifest.labels)
            data = preprocess_split(split, manifest.spec)
            backend["verify"] = False  # load_manifest above already checked the hashes
        rows.append(bench_artifact(artifact, data=data, batch=args.batch_size, iterations=args.bench_iterations,
                                   name=str(artifact), **backend))
    if args.json:
        print(json.dumps({"machine": machine_description(), "rows": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(text_table(rows))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..manifest import load_manifest

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
        f"preprocess: resize {spec.interpolation}, crop_pct {spec.crop_pct} ({spec.crop_mode}), "
        f"mean {spec.mean}, std {spec.std}",
        "files:      " + ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in manifest.files),
    ]

    def shown(value: Any, form: str) -> str:  # parity/accuracy keys are optional: other versions may lack some
        return format(value, form) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

    if manifest.parity:
        p = manifest.parity
        lines.append(
            f"parity:     top-1 agreement {shown(p.get('top1_agreement'), '.1%')} with "
            f"{p.get('reference', '?')} on {p.get('images', '?')} {p.get('split', '?')} images, "
            f"max logit error {shown(p.get('max_abs_logit_error'), '.3g')}"
        )
    if manifest.accuracy:
        a = manifest.accuracy
        lines.append(f"accuracy:   top-1 {shown(a.get('top1'), '.1%')} on {a.get('images', '?')} "
                     f"{a.get('split', '?')} images")
    lines.append("tools:      " + ", ".join(f"{k} {v}" for k, v in manifest.tools.items()))
    print("\n".join(lines))
    return 0
