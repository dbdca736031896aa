"""``edge-cls predict``, ``bench``, ``serve`` and ``info``: what a device-side user runs on artifacts.

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
    from . import predict

    predict.add_parsers(sub)

    bench = sub.add_parser("bench", help="latency, throughput, size (and accuracy) of artifacts")
    bench.add_argument("artifacts", nargs="+", type=Path,
                       help="artifact directories, or candidate bundles (export --defer-choice): their candidates")
    options.add(bench, "data_dir", note="or one labelled split directory: top-1 is measured on it")
    options.add(bench, "split", default="test", note="default: test")
    options.add(bench, "bench_iterations", default=100, note="default: 100")
    options.add(bench, "batch_size", default=8, note="throughput batch; default: 8")
    options.add(bench, "images", note="times file -> top-5 answers: a plain loop against the pipelined path")
    options.add(bench, "cold_start", default=True, note="default: yes")
    options.add(bench, "benchmark_app", default=True, note="default: yes, where OpenVINO is installed")
    options.add(bench, "workers", note="of the pipelined path; default: one per CPU, up to 4")
    options.add(bench, "rounds", default=3, note="default: 3")
    options.add_all(bench, "backend", "json")
    bench.set_defaults(func=_cmd_bench)

    serve = sub.add_parser("serve", help="classify images for other processes over HTTP")
    serve.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(serve, "host", default="127.0.0.1", note="default: 127.0.0.1; 0.0.0.0 for every interface")
    options.add(serve, "port", default=8000, note="default: 8000")
    options.add(serve, "topk", default=5, note="default: 5; a request may ask ?k=N")
    options.add(serve, "workers", note="default: one per CPU, up to 4")
    options.add(serve, "max_queue", default=16, note="default: 16")
    options.add(serve, "max_upload_mb", default=10.0, note="default: 10")
    options.add(serve, "backend")
    serve.set_defaults(func=_cmd_serve)

    choose = sub.add_parser(
        "choose", help="on the device: re-check and time a bundle's candidates here, write the winner as an artifact",
        description="Verify a candidate bundle (made by 'edge-cls export --defer-choice'), re-check every candidate "
        "on its stored check images with this device's runtime, time them round-robin here, and write the fastest "
        "that keeps the answer (the same rule as the export) as a normal artifact that records this device. Needs "
        "only numpy, pillow and one runtime.")
    choose.add_argument("bundle", type=Path, help="a candidate bundle directory (holds bundle.json)")
    options.add(choose, "output", note="required: the artifact directory to write")
    options.add(choose, "format")
    options.add(choose, "rounds", default=7, note="timing rounds; default: 7")
    choose.set_defaults(func=_cmd_choose)

    info = sub.add_parser("info", help="what an artifact is and how it was checked")
    info.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(info, "json")
    info.set_defaults(func=_cmd_info)


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_cls.measure.latency import bench_artifact
    from edge_cls.measure.machine import machine_description
    from edge_cls.measure.tables import text_table

    images = _bench_images(args.images)
    rows, app_rows = [], []
    for artifact in _expand_bundles(args.artifacts):
        backend = {"backend": args.backend} if args.backend else {}
        batches = None
        if args.data_dir:
            from edge_cls.artifact.manifest import load_manifest
            from edge_cls.data import iter_split_batches, labelled_split

            manifest = load_manifest(artifact)
            split = labelled_split(args.data_dir, split=args.split, classes=manifest.labels)
            batches = iter_split_batches(split, manifest.spec, placement=manifest.placement)  # one batch at a time
            backend["verify"] = False  # load_manifest above already checked the hashes
        row = bench_artifact(artifact, batches=batches, batch=args.batch_size, iterations=args.bench_iterations,
                             name=str(artifact), **backend)
        rows.append(row)
        if images or args.cold_start or args.benchmark_app:
            app_rows.append(_bench_app(args, artifact, images, backend))
    if args.json:
        from edge_cls.measure.machine import device_model

        print(json.dumps({"machine": machine_description(), "device": device_model(),
                          "rows": [r.to_dict() for r in rows], "app": [r.to_dict() for r in app_rows]}, indent=2))
    else:
        from edge_cls.measure.tables import app_table

        print(text_table(rows))
        if app_rows:
            print("\nWhat an app feels (median, min-max over rounds):\n" + app_table(app_rows))
    return 0


def _expand_bundles(paths: list[Path]) -> list[Path]:
    """Artifacts as given; a candidate bundle (``export --defer-choice``) stands for its candidates whose
    runtime is installed here, verified first."""
    from edge_cls.artifact.bundle import BUNDLE_NAME, read_bundle
    from edge_cls.runtimes import available_backends

    out = []
    for path in paths:
        if not (path / BUNDLE_NAME).is_file():
            out.append(path)
            continue
        bundle = read_bundle(path)
        out += [path / c.directory for c in bundle.candidates if c.backend in available_backends()
                and not _built_on_device(c.backend)]
    return out


def _built_on_device(backend: str) -> bool:
    from edge_cls.runtimes import backend_class

    return backend_class(backend).compiles_on_device


def _bench_images(folder: Path | None) -> list[Path] | None:
    if folder is None:
        return None
    from edge_cls.data import image_files

    return image_files(folder)


def _bench_app(args: argparse.Namespace, artifact: Path, images: list[Path] | None, backend: dict[str, Any]) -> Any:
    from edge_cls.measure.app import bench_app

    backend = {key: value for key, value in backend.items() if key == "backend"}
    return bench_app(artifact, images=images, cold=args.cold_start, tool=args.benchmark_app, rounds=args.rounds,
                     batch=args.batch_size, workers=args.workers or None, iterations=args.bench_iterations,
                     name=str(artifact), **backend)


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge_cls.runtimes import load
    from edge_cls.serve import ServeOptions, Server

    serve_options = ServeOptions(host=args.host, port=args.port, k=args.topk, max_queue=args.max_queue,
                                 max_bytes=int(args.max_upload_mb * 2**20), workers=args.workers or None)
    backend = {"backend": args.backend} if args.backend else {}
    classifier = load(args.artifact, throughput=True, **backend)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with Server(classifier, serve_options) as server:
        print(f"edge-cls: serving {args.artifact} ({classifier.backend.name}, {classifier.precision}) on {server.url}"
              f" - POST /predict, GET /health, GET /info; Open Inference Protocol under /v2 (models "
              f"{server.service.name!r}: encoded images, {server.service.name + '-tensor'!r}: tensors)", flush=True)
        while not stop.wait(0.5):
            pass
        print("edge-cls: stopping: finishing the requests in flight", file=sys.stderr, flush=True)
    return 0


def _cmd_choose(args: argparse.Namespace) -> int:
    from edge_cls.errors import ConfigError
    from edge_cls.measure.choose import choose

    if args.output is None:
        raise ConfigError("give --output DIR: the artifact the device chooses is written there")
    result = choose(args.bundle, args.output, fmt=args.format, rounds=args.rounds)
    chosen, e = result.selection.chosen, result.selection.chosen.evidence
    print(f"{result.artifact}: {chosen.precision} ({chosen.recipe}, ran as {chosen.runtime_precision}) on this "
          f"device: {result.selection.reason}; expected top-1 drop {e.expected_drop:.2f} pts [{e.drop_low:.2f}, "
          f"{e.drop_high:.2f}] on {e.pictures} pictures; chosen in {result.seconds:.1f} s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from edge_cls.artifact.manifest import load_manifest

    manifest = load_manifest(args.artifact)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    spec = manifest.spec
    lines = [
        f"artifact:   {args.artifact}",
        f"model:      {manifest.model_name or '?'} ({manifest.num_classes} classes, {manifest.task})",
        f"backend:    {manifest.backend}, {manifest.precision} (ran as {manifest.runtime_precision or '?'})",
        f"input:      {manifest.input_name} {manifest.input_shape} {_input_text(manifest)}",
        f"preprocess: resize {spec.interpolation}, crop_pct {spec.crop_pct} ({spec.crop_mode}), "
        f"mean {spec.mean}, std {spec.std}; runs: {manifest.placement.name}",
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
    if manifest.embeddings:
        e = manifest.embeddings
        lines.append(f"embeddings: {e.get('source')} {e.get('features')} -> {e.get('dims')} dims"
                     f"{' (PCA)' if e.get('reduced') else ''}{', normalised' if e.get('normalized') else ''}, "
                     f"min cosine with PyTorch {shown((e.get('parity') or {}).get('min_cosine'), '.5f')}")
    lines.append("tools:      " + ", ".join(f"{k} {v}" for k, v in manifest.tools.items()))
    if manifest.accepted_drop:
        lines.append("WARNING:    shipped although it missed the accuracy bar (--accept-drop)")
    if manifest.search:
        from edge_cls.measure.tables import format_search

        lines += format_search(manifest.search)
    print("\n".join(lines))
    return 0


def _input_text(manifest: Any) -> str:
    if manifest.placement.in_graph:
        return "uint8 NHWC RGB pixels (the graph converts, transposes and normalises them)"
    return f"float32 {manifest.spec.layout} {manifest.spec.channel_order}"
