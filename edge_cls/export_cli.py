"""``edge-cls export``: artifacts for a model the user already has, without distilling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DataError

IMAGENET_CLASSES = 1000


def add_export_parser(sub: Any, add_target_args: Callable[[argparse.ArgumentParser], None]) -> None:
    from .export.formats import format_table  # light: no torch

    e = sub.add_parser(
        "export", help="export a trained model (timm name + weights, or an edge-cls checkpoint) to artifacts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a model to checked artifact directories, one per format and precision.\n\n" + format_table(),
    )
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="timm model name, e.g. efficientnet_b0")
    source.add_argument("--checkpoint", type=Path, help="an edge-cls checkpoint (from 'edge-cls build')")
    e.add_argument("--weights", type=Path, help="local state dict for --model (.pth, .safetensors)")
    e.add_argument("--pretrained", action="store_true", help="hub weights for --model (needs the internet)")
    e.add_argument("--labels", type=Path, help="class names: a text file with one per line, or a JSON list")
    e.add_argument("--num-classes", type=int, help="number of classes when no --labels (names become 0..N-1)")
    e.add_argument("--input-size", type=int, help="square input size (default: the model's pretrained_cfg)")
    e.add_argument("--calib", type=Path, help="folder of representative images for INT8 calibration")
    e.add_argument("--reference", type=Path, help="folder of images to check parity on (default: --calib)")
    e.add_argument("--calibration-size", type=int, default=300)
    e.add_argument("--out", type=Path, required=True, help="output directory; one sub-directory per artifact")
    add_target_args(e)
    e.set_defaults(func=run_export)


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise ConfigError(f"{path} must hold a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {path} is empty")
    return labels


def run_export(args: argparse.Namespace) -> int:
    from .export import ReferenceSet, export_artifacts, resolve_targets

    targets = resolve_targets(args.formats, args.precisions)  # fail before loading anything
    if any(t.needs_calibration for t in targets) and args.calib is None:
        raise ConfigError("INT8 needs --calib, a folder of representative images (a few hundred is plenty)")
    reference_dir = args.reference or args.calib
    if reference_dir is None:
        raise ConfigError("give --reference (or --calib): a folder of images to check the exported model against PyTorch")

    from .calibration_data import CalibrationSet
    from .models import Checkpoint, ModelRecipe, create_model, spec_for_model

    if args.checkpoint:
        checkpoint = Checkpoint.load(args.checkpoint)
        model, spec, labels, name = checkpoint.build(), checkpoint.spec, checkpoint.labels, checkpoint.recipe.name
    else:
        if args.weights is None and not args.pretrained:
            raise ConfigError("give --weights PATH (or --pretrained): exporting random weights is never what you want")
        labels = _labels_for(args)
        model = create_model(ModelRecipe(name=args.model, num_classes=len(labels)), pretrained=args.pretrained, weights=args.weights)
        spec, name = spec_for_model(model, input_size=args.input_size), args.model
    model.eval()
    calibration = CalibrationSet.from_folder(args.calib, spec, size=args.calibration_size) if args.calib else None
    # Another seed than calibration's: parity measured on the calibration images would flatter INT8.
    reference_images = CalibrationSet.from_folder(reference_dir, spec, size=args.calibration_size, seed=1)
    reference = ReferenceSet.from_model(model, reference_images.array, name=reference_dir.name)
    exported = export_artifacts(model, spec, labels, args.out, targets, reference=reference,
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
