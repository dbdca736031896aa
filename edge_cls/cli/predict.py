"""``edge-cls predict`` and ``edge-cls check``: answers for images, and whether new images look
like the ones an artifact was validated on. Torch-free: one runtime is enough."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
    options.add_all(p, "backend", "json", "jsonl", "embeddings")
    options.add(p, "engine", default="local", note="default: local")
    options.add(p, "output_format")
    options.add(p, "output", note="with --output-format parquet: the directory of Parquet files")
    options.add_all(p, "address")
    options.add(p, "actors", default=1, note="--engine ray; default: 1")
    options.add(p, "actor_cpus", default=1.0, note="--engine ray; default: 1")
    p.set_defaults(func=_cmd_predict)

    c = sub.add_parser("check", help="do new images look like the artifact's validation images?",
                       description="Classify a folder of images and compare with the artifact's validation "
                       "figures: with labels (sub-folders named like the artifact's classes), top-1 and "
                       "calibration error; without, the shift of the confidence and of the predicted-class "
                       "distributions (population stability index) and the classes whose share moved most; "
                       "for artifacts with embeddings, a two-sample test (MMD, permutation p-value, flagged "
                       "below 0.01) of the embedding distribution against the validation images'.")
    c.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(c, "images", note="required; searched with its sub-folders")
    options.add_all(c, "backend", "json")
    c.set_defaults(func=_cmd_check)


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.output_format == "jsonl":
        args.jsonl = True
    if args.engine == "ray" or args.output_format == "parquet":
        return _predict_on_ray(args)
    from edge_cls.data import iter_images, no_images_error
    from edge_cls.progress import progress
    from edge_cls.runtimes import load
    from edge_cls.runtimes.records import artifact_identity, record

    answer_options = {"min_confidence": args.min_confidence, "calibrated": not args.raw_scores,
                      "embeddings": args.embeddings}
    failed = total = 0
    backend = {"backend": args.backend} if args.backend else {}
    with load(args.artifact, throughput=args.workers != 0, **backend) as classifier:
        identity = artifact_identity(classifier)
        paths = iter_images(args.images, recursive=args.recursive)
        first = next(paths, None)
        if first is None:
            raise no_images_error(args.images, recursive=args.recursive)
        paths = (str(p) for p in itertools.chain([first], paths))
        workers = 0 if args.workers == 0 else args.workers
        collected = []
        with classifier.predict_stream(paths, args.topk, batch_size=args.batch_size, workers=workers,
                                       **answer_options) as stream:
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


def _predict_on_ray(args: argparse.Namespace) -> int:
    from edge_cls.errors import ConfigError

    if args.engine != "ray" or args.output_format != "parquet" or args.output is None:
        raise ConfigError("scoring on Ray writes Parquet: give --engine ray --output-format parquet --output DIR")
    if args.backend:
        raise ConfigError("--backend is not supported with --engine ray: the artifact runs on its own backend")
    if args.embeddings:  # the Parquet schema has no vector column yet
        raise ConfigError("--embeddings is not supported with --engine ray yet: use --jsonl --embeddings")
    from edge_cls.scale.ray_data import predict_to_parquet

    rows, failed = predict_to_parquet(
        args.artifact, args.images, args.output, address=args.address, recursive=args.recursive, k=args.topk,
        actors=args.actors, actor_cpus=args.actor_cpus, batch_size=args.batch_size,
        min_confidence=args.min_confidence, calibrated=not args.raw_scores)
    print(f"edge-cls: {rows} records written to {args.output}", file=sys.stderr)
    if failed:
        print(f"edge-cls: error: {failed} of {rows} images could not be read (see their records)", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _print_results(results: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([
            {"image": r.source, "predictions": [p.to_dict() for p in r.predictions],
             **({"error": str(r.error)} if r.error else {}),
             **({"embedding": r.embedding.tolist()} if r.embedding is not None else {})} for r in results
        ], indent=2))
        return
    for r in results:
        if r.ok:
            print(f"{r.source}: " + ", ".join(f"{p.label} ({p.score:.3f})" for p in r.predictions))


def _cmd_check(args: argparse.Namespace) -> int:
    from edge_cls.calibration_data import folder_labels
    from edge_cls.data import image_files
    from edge_cls.errors import ConfigError
    from edge_cls.quality.drift import compare
    from edge_cls.runtimes import load

    if args.images is None:
        raise ConfigError("give --images DIR: the production images to check")
    backend = {"backend": args.backend} if args.backend else {}
    with load(args.artifact, **backend) as classifier:
        m = classifier.manifest
        if (m.task != "single_label" or m.summary is None) and classifier.embedding_space is None:
            raise ConfigError(f"{args.artifact} has no validation summary to compare with (multi-label, or built "
                              "before edge-cls stored one): rebuild it with edge-cls build or export")
        paths = image_files(args.images)
        if m.task != "single_label" or m.summary is None:  # the embeddings alone: a multi-label artifact
            return _features_only(classifier, paths, args.json)
        targets = folder_labels(Path(args.images), paths, m.labels)
        probabilities, vectors, kept = _classify_all(classifier, paths)
        if not probabilities:
            raise ConfigError(f"none of the {len(paths)} images in {args.images} could be read")
        report = compare(m.summary, np.stack(probabilities), m.labels,
                         None if targets is None else targets[kept])
        space = classifier.embedding_space
        if space is not None and len(vectors) >= 2:
            from edge_cls.quality.feature_drift import mmd_test

            report.features = mmd_test(space.reference, space.drift_features(np.stack(vectors)))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


def _features_only(classifier: Any, paths: list[Path], as_json: bool) -> int:
    """``check`` where only the embeddings can be compared (no single-label validation summary)."""
    from edge_cls.errors import ConfigError
    from edge_cls.quality.feature_drift import mmd_test

    _, vectors, _ = _classify_all(classifier, paths)
    if len(vectors) < 2:
        raise ConfigError(f"fewer than 2 of the {len(paths)} images could be read: nothing to compare")
    space = classifier.embedding_space
    shift = mmd_test(space.reference, space.drift_features(np.stack(vectors)))
    print(json.dumps({"feature_shift": shift.to_dict()}, indent=2) if as_json else f"feature shift:     {shift.line()}")
    return 0


def _classify_all(classifier: Any, paths: list[Path]) -> tuple[list[Any], list[Any], list[int]]:
    """Every class's calibrated probability and (with embeddings) the vector of each readable image."""
    labels = classifier.manifest.labels
    probabilities, vectors, kept = [], [], []
    embeddings = classifier.embedding_space is not None
    with classifier.predict_stream([str(p) for p in paths], k=len(labels), embeddings=embeddings) as stream:
        for i, result in enumerate(stream):
            if result.ok:
                scores = np.zeros(len(labels))
                for p in result.predictions:
                    scores[p.index] = p.score
                probabilities.append(scores)
                kept.append(i)
                if result.embedding is not None:
                    vectors.append(result.embedding)
    return probabilities, vectors, kept
