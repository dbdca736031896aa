"""``edge-cls predict`` and ``edge-cls check``: answers for images, and whether new images look
like the ones an artifact was validated on. Torch-free: one runtime is enough."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import options

EXIT_ERROR = 1


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k predictions of an artifact for image files or folders")
    p.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    p.add_argument("images", nargs="+", type=Path, help="image files, or folders of them")
    options.add(p, "topk", default=5, note="default: 5")
    options.add_all(p, "min_confidence", "raw_scores", "recursive")
    options.add(p, "batch_size", default=8, note="default: 8")
    options.add(p, "workers", note="decoding threads; default: one per CPU, up to 4 (0: none)")
    options.add_all(p, "backend", "json", "jsonl")
    p.set_defaults(func=_cmd_predict)

    c = sub.add_parser("check", help="do new images look like the artifact's validation images?",
                       description="Classify a folder of images and compare with the artifact's validation "
                       "figures: with labels (sub-folders named like the artifact's classes), top-1 and "
                       "calibration error; without, the shift of the confidence and of the predicted-class "
                       "distributions (population stability index) and the classes whose share moved most.")
    c.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(c, "images", note="required; searched with its sub-folders")
    options.add_all(c, "backend", "json")
    c.set_defaults(func=_cmd_check)


def image_paths(sources: list[Path], *, recursive: bool) -> Iterator[Path]:
    """The image files named, and those inside the folders named (sorted; sub-folders with
    ``recursive``), listed lazily so a folder of millions costs no memory up front."""
    from ..data import IMAGE_SUFFIXES

    for source in sources:
        if not source.is_dir():
            yield source  # a missing or unreadable file becomes that image's error
            continue
        for root, dirs, files in os.walk(source):
            dirs.sort()
            if not recursive:
                dirs.clear()
            for name in sorted(files):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield Path(root) / name


def streaming_load_options(artifact: str, backend: str | None, workers: int | None) -> dict[str, Any]:
    """Load options for a classifier that decodes on worker threads while it infers: ONNX Runtime's
    idle threads then stop busy-waiting, which leaves the cores to decoding (see its ``spin``)."""
    from ..manifest import load_manifest

    load_options: dict[str, Any] = {"backend": backend} if backend else {}
    # verify=False: load() checks the files right after; here only the backend's name is needed
    if workers != 0 and (backend or load_manifest(artifact, verify=False).backend) == "onnxruntime":
        load_options["spin"] = False
    return load_options


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..progress import progress
    from ..runtimes import load
    from ..runtimes.records import artifact_identity, record

    answer = {"min_confidence": args.min_confidence, "calibrated": not args.raw_scores}
    failed = total = 0
    with load(args.artifact, **streaming_load_options(args.artifact, args.backend, args.workers)) as classifier:
        identity = artifact_identity(classifier)
        paths = (str(p) for p in image_paths(args.images, recursive=args.recursive))
        workers = 0 if args.workers == 0 else args.workers
        collected = []
        with classifier.predict_stream(paths, args.topk, batch_size=args.batch_size, workers=workers,
                                       **answer) as stream:
            for result in progress(stream, desc="predict", unit="img", enabled=args.jsonl):
                total += 1
                failed += not result.ok
                if args.jsonl:
                    print(json.dumps(record(result, identity)), flush=True)
                else:
                    collected.append(result)
    if not args.jsonl:
        _print_results(collected, args.json)
    for r in collected:
        if not r.ok:
            print(f"edge-cls: error: {r.error}", file=sys.stderr)
    if args.jsonl and failed:
        print(f"edge-cls: error: {failed} of {total} images could not be read (see their records)", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _print_results(results: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([
            {"image": r.source, "predictions": [p.to_dict() for p in r.predictions],
             **({"error": str(r.error)} if r.error else {})} for r in results
        ], indent=2))
        return
    for r in results:
        if r.ok:
            print(f"{r.source}: " + ", ".join(f"{p.label} ({p.score:.3f})" for p in r.predictions))


def _cmd_check(args: argparse.Namespace) -> int:
    import numpy as np

    from ..calibration_data import folder_labels
    from ..errors import ConfigError
    from ..monitor import compare
    from ..runtimes import load

    if args.images is None:
        raise ConfigError("give --images DIR: the production images to check")
    backend = {"backend": args.backend} if args.backend else {}
    with load(args.artifact, **backend) as classifier:
        m = classifier.manifest
        if m.task != "single_label" or m.summary is None:
            raise ConfigError(f"{args.artifact} has no validation summary to compare with (multi-label, or built "
                              "before edge-cls stored one): rebuild it with edge-cls build or export")
        paths = list(image_paths([args.images], recursive=True))
        if not paths:
            raise ConfigError(f"{args.images} has no images")
        targets = folder_labels(Path(args.images), paths, m.labels)
        probabilities, kept = [], []
        with classifier.predict_stream([str(p) for p in paths], k=len(m.labels)) as stream:
            for i, result in enumerate(stream):
                if result.ok:
                    scores = np.zeros(len(m.labels))
                    for p in result.predictions:
                        scores[p.index] = p.score
                    probabilities.append(scores)
                    kept.append(i)
        if not probabilities:
            raise ConfigError(f"none of the {len(paths)} images in {args.images} could be read")
        report = compare(m.summary, np.stack(probabilities), m.labels,
                         None if targets is None else targets[kept])
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0
