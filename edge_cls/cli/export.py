"""``edge-cls export``: artifacts for a model the user already has, without distilling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from . import options

IMAGENET_CLASSES = 1000


def add_parser(sub: Any) -> None:
    from ..export.formats import format_table  # light: no torch

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
    options.add_all(e, "calib_data", "check_data", "calibration_size")
    options.add(e, "output", note="one sub-directory per artifact")
    options.add(e, "formats", default=["onnx", "openvino"], note="default: onnx openvino")
    options.add(e, "precisions", default=["fp32", "int8"], note="default: fp32 int8")
    e.set_defaults(func=run_export)


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"labels file {path} is not UTF-8 text ({e}); save it as UTF-8") from e
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


def run_export(args: argparse.Namespace) -> int:
    from ..export import ReferenceSet, export_artifacts, resolve_targets

    if args.model is None and args.checkpoint is None:
        raise ConfigError("give --model NAME (with --weights or --pretrained) or --checkpoint FILE")
    if args.model is not None and args.checkpoint is not None:
        raise ConfigError("give --model or --checkpoint, not both")
    if args.output is None:
        raise ConfigError("give --output DIR: the artifacts go into one sub-directory each")
    targets = resolve_targets(args.formats, args.precisions)  # fail before loading anything
    if any(t.needs_calibration for t in targets) and args.calib_data is None:
        raise ConfigError("INT8 needs --calib-data, a folder of representative images (a few hundred is plenty)")
    check_dir = args.check_data or args.calib_data
    if check_dir is None:
        raise ConfigError(
            "give --check-data (or --calib-data): a folder of images to check the exported model against PyTorch"
        )
    calibration_size = args.calibration_size or 300

    from ..calibration_data import CalibrationSet
    from ..training.checkpoints import Checkpoint
    from ..training.models import ModelRecipe, create_model, spec_for_model

    if args.checkpoint:
        checkpoint = Checkpoint.load(args.checkpoint)
        model, spec, labels, name = checkpoint.build(), checkpoint.spec, checkpoint.labels, checkpoint.recipe.name
    else:
        if args.weights is None and not args.pretrained:
            raise ConfigError("give --weights PATH (or --pretrained): exporting random weights is never what you want")
        labels = _labels_for(args)
        model = create_model(ModelRecipe(name=args.model, num_classes=len(labels)), pretrained=bool(args.pretrained),
                             weights=args.weights)
        spec, name = spec_for_model(model, input_size=args.img_size), args.model
    model.eval()
    calibration = CalibrationSet.from_folder(args.calib_data, spec, size=calibration_size) if args.calib_data else None
    # Another seed than calibration's: parity measured on the calibration images would flatter INT8.
    reference_images = CalibrationSet.from_folder(check_dir, spec, size=calibration_size, seed=1)
    reference = ReferenceSet.from_model(model, reference_images.array, name=check_dir.name)
    exported = export_artifacts(model, spec, labels, args.output, targets, reference=reference,
                                calibration=calibration, model_name=name)
    for artifact in exported:
        p = artifact.manifest.parity
        print(f"{artifact.path}: top-1 agreement {100 * p['top1_agreement']:.1f}% on {p['images']} images, "
              f"max logit error {p['max_abs_logit_error']:.3g}, ran as {artifact.manifest.runtime_precision}")
    return 0


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
