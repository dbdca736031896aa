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
    options.add_all(e, "max_drop", "min_agreement", "accept_drop", "recipes", "qad_seconds", "taxonomy",
                    "defer_choice", "min_precision")
    options.add(e, "embedding_dims", default=64, note="default: 64")
    e.set_defaults(func=run_export)

    s = sub.add_parser(
        "sign", help="sign an artifact with a private key; devices verify with the public key only",
        description="Write ARTIFACT/model.sig: a public-key signature over the manifest and every file, in OpenSSF "
        "model-signing's bundle format (model_signing verify key accepts it). Devices that set "
        "EDGE_CLS_TRUSTED_KEYS (or load(..., trusted_keys=...)) to the public key refuse unsigned or changed "
        "artifacts, and cannot sign. Make a key: openssl ecparam -name prime256v1 -genkey -noout -out key.pem; "
        "openssl ec -in key.pem -pubout -out pub.pem",
    )
    s.add_argument("artifact", type=Path, help="an artifact directory (holds manifest.json)")
    options.add(s, "key", required=True)
    s.set_defaults(func=run_sign)

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
    options.add_all(z, "max_drop", "min_agreement", "accept_drop", "recipes", "qad_seconds", "taxonomy")
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


def run_sign(args: argparse.Namespace) -> int:
    from edge_cls.export.signing import sign_artifact

    path, public = sign_artifact(args.artifact, args.key)
    print(f"{path}: signed by the EC {public.key.curve.name} key {args.key} (public key sha256 {public.hint[:16]}...)")
    return 0


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
    targets = resolve_targets(args.formats, args.precisions, deferred=bool(getattr(args, "defer_choice", False)))
    if any(t.precision == "int8" for t in targets) and args.calib_data is None:
        raise ConfigError("INT8 needs --calib-data, a folder of representative images (a few hundred is plenty)")
    if args.calib_data is None and args.check_data is None:
        raise ConfigError("give --calib-data (and/or --check-data): images to calibrate on and to check the exported "
                          "model against PyTorch")
    _check_image_folders(args)
    return targets


def _check_image_folders(args: argparse.Namespace) -> None:
    """An image folder without images is refused before the model is loaded (one lazy look each)."""
    from edge_cls.data import image_files

    for flag, folder in (("--calib-data", args.calib_data), ("--check-data", args.check_data)):
        if folder is not None:
            try:
                image_files(folder, limit=1)
            except DataError as e:
                raise DataError(f"{flag} {e}") from None


def _export_and_report(args: argparse.Namespace, targets: list, model: Any, spec: Any, labels: list[str],
                       name: str) -> int:
    from edge_cls.export import AcceptanceRule, SearchSettings, export_artifacts
    from edge_cls.export.embeddings import embedding_settings
    from edge_cls.quality.acceptance import DEFAULT_MAX_DROP
    from edge_cls.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_file(args.taxonomy, labels) if args.taxonomy else None
    rule = AcceptanceRule(max_drop=DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop,
                          min_agreement=args.min_agreement)
    search = SearchSettings(rule=rule, accept_drop=bool(args.accept_drop),
                            only=tuple(args.recipes) if args.recipes else None, **distillation(args.qad_seconds))
    calibrate = any(t.needs_calibration for t in targets)
    calibration, reference, cross_fit = _calibration_and_check(args, model, spec, labels, calibrate=calibrate)
    common = dict(reference=reference, calibration=calibration, model_name=name, search=search, taxonomy=taxonomy,
                  task=getattr(args, "task", "single_label"), cross_fit=cross_fit,
                  embeddings=embedding_settings(args.embedding_dims),
                  min_precision=getattr(args, "min_precision", None))
    if getattr(args, "defer_choice", False):
        from edge_cls.artifact.bundle import bundle_bytes, read_bundle
        from edge_cls.export.bundle_writer import export_bundle

        path = export_bundle(model, spec, labels, args.output, targets, **common)
        bundle = read_bundle(path)
        names = ", ".join(c.recipe for c in bundle.candidates)
        print(f"{path}: a candidate bundle of {len(bundle.candidates)} candidates ({names}), "
              f"{bundle_bytes(path) / 1e6:.1f} MB; on the device: edge-cls choose {path} --output ARTIFACT")
        return 0
    exported = export_artifacts(model, spec, labels, args.output, targets, **common)
    for artifact in exported:
        print(_shipped_line(artifact))
    return 0


def distillation(seconds: float | None, *, always: bool = False) -> dict[str, Any]:
    """The search settings for quantization-aware distillation: ``seconds`` caps its fine-tuning (None:
    the recipe's cap), 0 turns it off; ``always`` builds it even when a plain INT8 recipe meets the bar."""
    from dataclasses import replace

    from edge_cls.export.recipes import Distillation

    if seconds == 0:
        return {"distill": "never"}
    budget = None if seconds is None else replace(Distillation(), max_seconds=seconds)
    return {"distill": "always" if always else "when-needed", "distill_budget": budget}


def _shipped_line(artifact: Any) -> str:
    m, p = artifact.manifest, artifact.manifest.parity
    accuracy = f", top-1 {100 * m.accuracy['top1']:.1f}%" if m.accuracy else ""
    return (f"{artifact.path}: {m.precision} ({m.recipe}, ran as {m.runtime_precision}), expected top-1 drop "
            f"{p['expected_drop_points']:.2f} pts [{p['drop_low_points']:.2f}, {p['drop_high_points']:.2f}], agreement "
            f"{100 * p['top1_agreement']:.1f}% on {p['images']} check images of {p['pictures']} pictures{accuracy}"
            + (" [ACCEPTED DROP]" if m.accepted_drop else ""))


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
) -> tuple[Any, Any, Any]:
    """Calibration images, check images that never overlap them, and, when both come from one folder,
    the second cross-fitting fold. --check-data is the check set when given; else --calib-data is split
    in two halves by source picture (files sharing a stem stay together), calibrated on one and checked
    on the other, then the finalists the other way round (edge_cls.export.crossfit), so a folder of
    tens of photos still gives every picture as evidence. Check images in class folders named like the
    labels are scored against those labels too."""
    from edge_cls.calibration_data import CalibrationSet, default_cache_dir, split_folder

    size = args.calibration_size or 300
    augment = size if args.calib_augment else 0
    cache = default_cache_dir()
    if args.check_data is not None:
        reference = _check_folder(args, model, spec, labels)
        calibration = None
        if args.calib_data and calibrate:
            _refuse_overlap(args.check_data, args.calib_data)
            calibration = CalibrationSet.from_folder(args.calib_data, spec, size=size, augment_to=augment,
                                                     cache_dir=cache)
        return calibration, reference, None
    split = split_folder(args.calib_data, labels, calibration_size=size, check_size=size, check_fraction=0.5)
    folder = Path(args.calib_data).name
    reference = _reference(model, spec, split.check, split.check_targets, f"{folder} (half B)")
    if not calibrate:
        return None, reference, None
    from edge_cls.export import CrossFit

    calibration = CalibrationSet(split.calibration, spec, augment_to=augment, cache_dir=cache)
    second = CrossFit(CalibrationSet(split.check, spec, augment_to=augment, cache_dir=cache),
                      _reference(model, spec, split.calibration, split.calibration_targets, f"{folder} (half A)"))
    return calibration, reference, second


def _reference(model: Any, spec: Any, files: list[Path], targets: Any, name: str) -> Any:
    import numpy as np

    from edge_cls.calibration_data import picture_ids
    from edge_cls.export import ReferenceSet

    batch = np.stack([spec(path) for path in files])
    return ReferenceSet.from_model(model, batch, targets, name=name, groups=picture_ids(files), images=files)


def _check_folder(args: argparse.Namespace, model: Any, spec: Any, labels: list[str]) -> Any:
    """--check-data: at most DEFAULT_CHECK_SIZE images (memory and time stay bounded), class-stratified
    when it is an ImageFolder of the labels."""
    import numpy as np

    from edge_cls.calibration_data import DEFAULT_CHECK_SIZE, folder_labels, stratified_sample
    from edge_cls.data import image_files

    files = image_files(args.check_data)
    targets = folder_labels(Path(args.check_data), files, labels)
    keep = stratified_sample(targets if targets is not None else np.zeros(len(files), dtype=np.int64),
                             DEFAULT_CHECK_SIZE)
    return _reference(model, spec, [files[i] for i in keep], None if targets is None else targets[keep],
                      Path(args.check_data).name)


def _refuse_overlap(check: Path, calib: Path) -> None:
    from edge_cls.data import image_files

    overlap = {p.resolve() for p in image_files(check)} & {p.resolve() for p in image_files(calib)}
    if overlap:
        raise ConfigError(f"--check-data and --calib-data share {len(overlap)} images (e.g. {sorted(overlap)[0]}): an "
                          "artifact must not be checked on the images it was calibrated on")


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
