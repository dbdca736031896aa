"""``edge-cls export``: artifacts for a model the user already has, without distilling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_cls._fileio import read_user_text
from edge_cls.errors import ConfigError, DataError

from . import options

IMAGENET_CLASSES = 1000


def add_parser(sub: Any) -> None:
    from edge_cls.export.formats import format_table  # light: no torch

    e = sub.add_parser(
        "export",
        help="export a trained model (timm name + weights, or an edge-cls checkpoint) to artifacts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a model to checked artifact directories, one per format and precision.\n\n"
        + format_table(),
    )
    options.add(e, "model", note="with --weights or --pretrained; or give --checkpoint")
    options.add_all(e, "checkpoint", "weights", "pretrained", "labels", "num_classes")
    options.add(e, "img_size", note="default: the model's pretrained_cfg")
    options.add_all(e, "calib_data", "check_data", "calibration_size", "calib_augment")
    options.add(e, "output", note="one sub-directory per artifact")
    options.add(e, "formats", default=["onnx", "openvino"], note="default: onnx openvino")
    options.add(e, "precisions", default=["auto"], note="default: auto")
    options.add_all(e, "max_drop", "accept_drop", "recipes", "taxonomy", "min_precision")
    options.add(e, "embedding_dims", default=64, note="default: 64")
    e.set_defaults(func=run_export)

    z = sub.add_parser(
        "zero-shot", help="artifacts from a CLIP model and class names, no training",
        description="Build a classifier from an open_clip model: the class names go through the text tower "
        "once (prompt templates averaged) and become a fixed head on the image tower, which is exported like "
        "any model (precision search included). Adding a class means running this again with the new list.",
    )
    options.add(z, "clip_model", note="required")
    options.add(z, "clip_pretrained", note="without it the weights are random: for testing only")
    options.add(z, "labels", note="required: the class names, one per line or a JSON list")
    options.add_all(z, "templates", "calib_data", "check_data", "calibration_size", "calib_augment")
    options.add(z, "output", note="one sub-directory per artifact")
    options.add(z, "formats", default=["onnx", "openvino"], note="default: onnx openvino")
    options.add(z, "precisions", default=["auto"], note="default: auto")
    options.add_all(z, "max_drop", "accept_drop", "recipes", "taxonomy")
    options.add(z, "embedding_dims", default="full", note="default: full, so that text queries compare with "
                "CLIP's own image embeddings")
    z.set_defaults(func=run_zero_shot)


def read_labels(path: Path) -> list[str]:
    text = read_user_text(path, "labels file", ConfigError, "; save it as UTF-8")
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise ConfigError(f"{path} must hold a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {path} is empty")
    return labels


def run_zero_shot(args: argparse.Namespace) -> int:
    from edge_cls.export import resolve_targets

    if not args.clip_model or not args.labels:
        raise ConfigError("give --clip-model NAME (and --clip-pretrained TAG|FILE) and --labels FILE with the class "
                          "names")
    targets = _check_export_args(args, resolve_targets)
    from edge_cls.training.clip import read_templates, zero_shot_classifier

    labels = read_labels(args.labels)
    model, spec = zero_shot_classifier(args.clip_model, args.clip_pretrained, labels, read_templates(args.templates))
    return _export_and_report(args, targets, model, spec, labels, f"clip:{Path(args.clip_model).stem}")


def _check_export_args(args: argparse.Namespace, resolve_targets: Any) -> list:
    if args.output is None:
        raise ConfigError("give --output DIR: the artifacts go into one sub-directory each")
    targets = resolve_targets(args.formats, args.precisions)  # fail before loading anything
    if any(t.precision == "int8" for t in targets) and args.calib_data is None:
        raise ConfigError("INT8 needs --calib-data, a folder of representative images (a few hundred is plenty)")
    if args.calib_data is None and args.check_data is None:
        raise ConfigError("give --calib-data (and/or --check-data): images to calibrate on and to check the exported "
                          "model against PyTorch")
    return targets


def _export_and_report(args: argparse.Namespace, targets: list, model: Any, spec: Any, labels: list[str],
                       name: str) -> int:
    from edge_cls.export import AccuracyBar, SearchSettings, export_artifacts
    from edge_cls.export.embeddings import embedding_settings
    from edge_cls.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_file(args.taxonomy, labels) if args.taxonomy else None
    calibrate = any(t.needs_calibration for t in targets)
    calibration, reference = _calibration_and_check(args, model, spec, labels, calibrate=calibrate)
    bar = AccuracyBar() if args.max_drop is None else AccuracyBar(max_drop=args.max_drop)
    search = SearchSettings(bar=bar, accept_drop=bool(args.accept_drop),
                            only=tuple(args.recipes) if args.recipes else None)
    exported = export_artifacts(model, spec, labels, args.output, targets, reference=reference,
                                calibration=calibration, model_name=name, search=search, taxonomy=taxonomy,
                                task=getattr(args, "task", "single_label"),
                                embeddings=embedding_settings(args.embedding_dims),
                                min_precision=getattr(args, "min_precision", None))
    for artifact in exported:
        m = artifact.manifest
        accuracy = f", top-1 {100 * m.accuracy['top1']:.1f}%" if m.accuracy else ""
        print(f"{artifact.path}: {m.precision} ({m.recipe}, ran as {m.runtime_precision}), top-1 agreement "
              f"{100 * m.parity['top1_agreement']:.1f}% on {m.parity['images']} check images{accuracy}"
              + (" [ACCEPTED DROP]" if m.accepted_drop else ""))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from edge_cls.export import resolve_targets

    if args.model is None and args.checkpoint is None:
        raise ConfigError("give --model NAME (with --weights or --pretrained) or --checkpoint FILE")
    if args.model is not None and args.checkpoint is not None:
        raise ConfigError("give --model or --checkpoint, not both")
    targets = _check_export_args(args, resolve_targets)
    model, spec, labels, name = _load_model(args)
    return _export_and_report(args, targets, model, spec, labels, name)


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, list[str], str]:
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    if args.checkpoint:
        checkpoint = Checkpoint.load(args.checkpoint)
        args.task = checkpoint.metrics.get("task", "single_label")  # a multi-label model exports as one
        return checkpoint.build(), checkpoint.spec, checkpoint.labels, checkpoint.recipe.name
    if args.weights is None and not args.pretrained:
        raise ConfigError("give --weights PATH (or --pretrained): exporting random weights is never what you want")
    labels = _labels_for(args)
    model = create_model(ModelRecipe(name=args.model, num_classes=len(labels)), pretrained=bool(args.pretrained),
                         weights=args.weights)
    return model.eval(), spec_for_model(model, input_size=args.img_size), labels, args.model


def _calibration_and_check(
    args: argparse.Namespace, model: Any, spec: Any, labels: list[str], *, calibrate: bool
) -> tuple[Any, Any]:
    """Calibration images and check images that never overlap: --check-data when given, else a
    stratified split of --calib-data. Check images in class folders named like the labels are
    scored by top-1, others by agreement with PyTorch."""
    import numpy as np

    from edge_cls.calibration_data import (
        DEFAULT_CHECK_SIZE,
        CalibrationSet,
        default_cache_dir,
        folder_labels,
        split_folder,
        stratified_sample,
    )
    from edge_cls.data import image_files
    from edge_cls.export import ReferenceSet

    size = args.calibration_size or 300
    augment = size if args.calib_augment else 0
    cache = default_cache_dir()
    if args.check_data is not None:
        check_files = image_files(args.check_data)
        check_targets = folder_labels(Path(args.check_data), check_files, labels)
        strata = check_targets if check_targets is not None else np.zeros(len(check_files), dtype=np.int64)
        keep = stratified_sample(strata, DEFAULT_CHECK_SIZE)  # memory and time stay bounded
        check_files = [check_files[i] for i in keep]
        check_targets = None if check_targets is None else check_targets[keep]
        calibration = None
        if args.calib_data and calibrate:
            overlap = {p.resolve() for p in check_files} & {p.resolve() for p in image_files(args.calib_data)}
            if overlap:
                raise ConfigError(f"--check-data and --calib-data share {len(overlap)} images (e.g. "
                                  f"{sorted(overlap)[0]}): an artifact must not be checked on the images it was "
                                  "calibrated on")
            calibration = CalibrationSet.from_folder(args.calib_data, spec, size=size, augment_to=augment,
                                                     cache_dir=cache)
        check_name = Path(args.check_data).name
    else:
        split = split_folder(args.calib_data, labels, calibration_size=size)
        calibration = None
        if calibrate:
            calibration = CalibrationSet(split.calibration, spec, augment_to=augment, cache_dir=cache)
        check_files, check_targets = split.check, split.check_targets
        check_name = f"{Path(args.calib_data).name} (held out)"
    batch = np.stack([spec(path) for path in check_files])
    return calibration, ReferenceSet.from_model(model, batch, check_targets, name=check_name)


def _labels_for(args: argparse.Namespace) -> list[str]:
    if args.labels:
        labels = read_labels(args.labels)
        if args.num_classes and args.num_classes != len(labels):
            raise ConfigError(f"--num-classes {args.num_classes} but {args.labels} has {len(labels)} labels")
        return labels
    if args.num_classes == IMAGENET_CLASSES or (args.num_classes is None and args.pretrained):
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_names())  # shipped inside timm: works offline
    if args.num_classes:
        return [str(i) for i in range(args.num_classes)]
    raise DataError("give --labels FILE or --num-classes N")
