"""The command line's vocabulary: every flag is defined once, here, with one meaning.

Commands pick flags from :data:`VOCABULARY` by name, so ``--batch-size`` or ``--output`` cannot
mean one thing in ``build`` and another in ``bench``. Names follow timm's ``train.py`` where it
has one (``--img-size``, ``--smoothing``, ``--model-ema-decay``, ``--kd-temperature``, ...); the
spellings earlier edge-cls versions documented stay accepted as hidden aliases. A test walks
every subcommand and checks both rules.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # shown in --help
    help: str
    aliases: tuple[str, ...] = ()  # older spellings: accepted, not shown
    kwargs: dict[str, Any] = field(default_factory=dict)  # type, nargs, choices, action, metavar
    alias_kwargs: dict[str, Any] = field(default_factory=dict)  # where an alias parses differently


def _int_at_least(minimum: int, what: str = "a number") -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def _float_in(low: float, high: float | None = None) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value >= low and (high is None or value <= high)):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = f"float>={low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


class _SizeAlias(argparse.Action):
    """timm's ``--input-size C H W`` (or the old ``--input-size N``): stored as a square size."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        values = list(values)
        if len(values) == 3:
            channels, height, width = values
            if channels != 3 or height != width:
                parser.error(
                    f"{option_string} {' '.join(map(str, values))}: only square 3-channel inputs; use --img-size N"
                )
            values = [height]
        if len(values) != 1 or values[0] < 8:
            parser.error(f"{option_string} takes N (>= 8) or 3 N N")
        setattr(namespace, self.dest, values[0])


def _dims(text: str) -> int | str:
    """A count of dimensions, or 'full'."""
    return text if text == "full" else _int_at_least(0, "--embedding-dims")(text)


SIZE = _int_at_least(8, "an image size")
COUNT = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
FRACTION = _float_in(0.0, 1.0)
NON_NEGATIVE_FLOAT = _float_in(0.0)
BOOL = {"action": argparse.BooleanOptionalAction}
PROBABILITY = {"type": FRACTION, "metavar": "P"}

VOCABULARY: dict[str, Flag] = {
    # what to read and where to write
    "config": Flag(
        ("-c", "--config"),
        "YAML or TOML config file (BuildConfig keys); flags given override it",
        kwargs={"type": Path, "metavar": "FILE"},
    ),
    "data_dir": Flag(
        ("--data-dir",),
        "dataset root: train/ val/ test/ ImageFolders, or train.csv/val.csv/test.csv (multi-label)",
        aliases=("--data",),
        kwargs={"type": Path, "metavar": "DIR"},
    ),
    "split": Flag(("--split",), "which split of --data-dir to use", kwargs={"choices": ["train", "val", "test"]}),
    "output": Flag(("--output",), "output directory", aliases=("--out",), kwargs={"type": Path, "metavar": "DIR"}),
    "resume": Flag(
        ("--resume",), "continue an interrupted run in --output; finished stages are loaded, not retrained", kwargs=BOOL
    ),
    "device": Flag(("--device",), "where to train (default: CUDA when available)", kwargs={"choices": ["cpu", "cuda"]}),
    # the model this command trains or exports (the student in build/distill)
    "model": Flag(("--model",), "timm model name", aliases=("--student",), kwargs={"metavar": "NAME"}),
    "pretrained": Flag(
        ("--pretrained",),
        "start --model from hub weights (needs the internet)",
        aliases=("--student-pretrained",),
        kwargs=BOOL,
    ),
    "weights": Flag(
        ("--weights",),
        "start --model from a local weights file (.pth/.pt/.bin/.safetensors, timm or "
        "plain state dict, or an edge-cls checkpoint); a classifier for other classes is replaced",
        aliases=("--student-weights", "--initial-checkpoint"),
        kwargs={"type": Path, "metavar": "FILE"},
    ),
    "img_size": Flag(
        ("--img-size",),
        "square input size of --model and its artifacts",
        aliases=("--input-size",),
        kwargs={"type": SIZE, "metavar": "N"},
        alias_kwargs={"type": int, "nargs": "+", "action": _SizeAlias},
    ),  # timm's C H W, or the old N
    "head_only": Flag(
        ("--head-only",), "train the classifier head only (backbone and its BatchNorm frozen)", kwargs=BOOL
    ),
    # the schedule and recipe of that model (timm train.py names)
    "epochs": Flag(("--epochs",), "training epochs", aliases=("--student-epochs",), kwargs={"type": COUNT}),
    "lr": Flag(("--lr",), "peak learning rate (cosine schedule with warm-up)", kwargs={"type": _positive_float}),
    "batch_size": Flag(
        ("-b", "--batch-size"),
        "images per batch (per process when training)",
        aliases=("--batch",),
        kwargs={"type": COUNT},
    ),
    "seed": Flag(("--seed",), "random seed", kwargs={"type": NON_NEGATIVE}),
    "opt": Flag(("--opt",), "optimizer, any timm.optim name (default: adamw)", kwargs={"metavar": "NAME"}),
    "weight_decay": Flag(("--weight-decay",), "weight decay", kwargs={"type": NON_NEGATIVE_FLOAT}),
    "warmup_epochs": Flag(("--warmup-epochs",), "epochs of linear warm-up", kwargs={"type": NON_NEGATIVE}),
    "hflip": Flag(("--hflip",), "horizontal flip probability (0 for digits and text)", kwargs={"type": FRACTION}),
    "scale": Flag(
        ("--scale",), "random-resized-crop area range", kwargs={"type": FRACTION, "nargs": 2, "metavar": "PCT"}
    ),
    "mixup": Flag(("--mixup",), "Mixup alpha (0: off)", kwargs={"type": NON_NEGATIVE_FLOAT}),
    "cutmix": Flag(("--cutmix",), "CutMix alpha (0: off)", kwargs={"type": NON_NEGATIVE_FLOAT}),
    "smoothing": Flag(
        ("--smoothing",), "label smoothing", aliases=("--label-smoothing",), kwargs={"type": _float_in(0.0, 0.99)}
    ),
    "model_ema_decay": Flag(
        ("--model-ema-decay",),
        "EMA of the weights, e.g. 0.999 (0: off)",
        aliases=("--ema-decay",),
        kwargs={"type": _float_in(0.0, 0.999999)},
    ),
    "clip_grad": Flag(("--clip-grad",), "max gradient norm (0: off)", kwargs={"type": NON_NEGATIVE_FLOAT}),
    "amp": Flag(
        ("--amp",),
        "mixed precision: auto (bf16/fp16 on CUDA, off on CPU; --amp alone), off, bf16, fp16",
        kwargs={"nargs": "?", "const": "auto", "choices": ["auto", "off", "bf16", "fp16"]},
    ),
    "balance": Flag(
        ("--balance",),
        "imbalanced data: class-weighted loss or class-balanced sampler",
        kwargs={"choices": ["none", "weighted", "sampler"]},
    ),
    "sizes": Flag(
        ("--sizes",),
        "progressive resizing, e.g. 128 160 224 (the last is --img-size)",
        kwargs={"type": SIZE, "nargs": "+", "metavar": "N"},
    ),
    "workers": Flag(
        ("-j", "--workers"),
        "data-loading workers (processes when training, decoding threads when classifying)",
        kwargs={"type": NON_NEGATIVE},
    ),
    # the teacher (build, distill)
    "kd_model_name": Flag(
        ("--kd-model-name",),
        "timm model name of the teacher (default: vit_convstem_tiny)",
        aliases=("--teacher",),
        kwargs={"metavar": "NAME"},
    ),
    "teacher_weights": Flag(
        ("--teacher-weights",),
        "teacher weights: an edge-cls checkpoint or .pth/.safetensors",
        kwargs={"type": Path, "metavar": "FILE"},
    ),
    "teacher_pretrained": Flag(("--teacher-pretrained",), "start the teacher from hub weights", kwargs=BOOL),
    "teacher_finetune": Flag(
        ("--teacher-finetune",),
        "fine-tune the teacher on the labels first (default: unless its weights already fit the classes)",
        kwargs=BOOL,
    ),
    "teacher_head_only": Flag(("--teacher-head-only",), "fine-tune the teacher's head only", kwargs=BOOL),
    "teacher_img_size": Flag(
        ("--teacher-img-size",),
        "teacher input size (default: --img-size)",
        aliases=("--teacher-input-size",),
        kwargs={"type": SIZE, "metavar": "N"},
    ),
    "teacher_epochs": Flag(("--teacher-epochs",), "epochs to fine-tune the teacher", kwargs={"type": COUNT}),
    "teacher_lr": Flag(("--teacher-lr",), "teacher learning rate", kwargs={"type": _positive_float}),
    # distillation (timm train.py's KD names)
    "kd_distill_type": Flag(
        ("--kd-distill-type",),
        "distillation loss: logit (KL), hard (DeiT), feature (MSE)",
        aliases=("--distill",),
        kwargs={"choices": ["logit", "hard", "feature"]},
    ),
    "kd_temperature": Flag(
        ("--kd-temperature",),
        "KD temperature (default: 4)",
        aliases=("--temperature",),
        kwargs={"type": _positive_float},
    ),
    "distill_loss_weight": Flag(
        ("--distill-loss-weight",),
        "weight of the KD loss (default: 1)",
        aliases=("--distill-weight",),
        kwargs={"type": NON_NEGATIVE_FLOAT},
    ),
    "task_loss_weight": Flag(
        ("--task-loss-weight",),
        "weight of the label loss (default: 1)",
        aliases=("--task-weight",),
        kwargs={"type": NON_NEGATIVE_FLOAT},
    ),
    "cache_teacher": Flag(
        ("--cache-teacher",), "compute teacher logits once (cheap, but no function matching)", kwargs=BOOL
    ),
    "compare_alone": Flag(("--compare-alone",), "also train the student on labels alone (default: yes)", kwargs=BOOL),
    # export
    "checkpoint": Flag(
        ("--checkpoint",),
        "an edge-cls checkpoint (from build, distill or finetune-teacher)",
        kwargs={"type": Path, "metavar": "FILE"},
    ),
    "labels": Flag(
        ("--labels",),
        "class names: a text file with one per line, or a JSON list",
        kwargs={"type": Path, "metavar": "FILE"},
    ),
    "num_classes": Flag(
        ("--num-classes",), "number of classes when there is no --labels (names become 0..N-1)", kwargs={"type": COUNT}
    ),
    "calib_data": Flag(
        ("--calib-data",),
        "folder of representative images for INT8 calibration",
        aliases=("--calib",),
        kwargs={"type": Path, "metavar": "DIR"},
    ),
    "check_data": Flag(
        ("--check-data",),
        "folder of images to check artifacts against PyTorch on (default: --calib-data)",
        aliases=("--reference",),
        kwargs={"type": Path, "metavar": "DIR"},
    ),
    "calibration_size": Flag(
        ("--calibration-size",),
        "images used to calibrate INT8 (default: 300)",
        kwargs={"type": _int_at_least(1, "--calibration-size")},
    ),
    "calib_augment": Flag(
        ("--calib-augment",),
        "add flipped and cropped views of the calibration images up to --calibration-size (small folders)",
        kwargs=BOOL,
    ),
    "formats": Flag(("--formats",), "onnx, openvino, tensorrt", kwargs={"nargs": "+", "metavar": "FORMAT"}),
    "precisions": Flag(
        ("--precisions",),
        "auto (per format, the fastest artifact that keeps the answer, chosen by measurement), fp32, fp16, "
        "bf16 (OpenVINO), int8",
        kwargs={"nargs": "+", "metavar": "PRECISION"},
    ),
    "max_drop": Flag(
        ("--max-drop",),
        "points of top-1 accuracy a low-precision artifact may be expected to lose on the check images, with or "
        "without labels (the upper end of its 90%% interval over pictures must stay within it; default: 0.3)",
        kwargs={"type": _float_in(0.0, 100.0), "metavar": "POINTS"},
    ),
    "defer_choice": Flag(
        ("--defer-choice",),
        "check the candidates here but let the device time them and choose: writes a candidate bundle to "
        "--output for 'edge-cls choose' on the device",
        kwargs=BOOL,
    ),
    "format": Flag(("--format",), "which format's candidates to choose from (default: the one whose runtime is "
                   "installed here)", kwargs={"metavar": "NAME"}),
    "qad_seconds": Flag(
        ("--qad-seconds",),
        "wall-time cap of quantization-aware distillation's fine-tuning; 0: never (build: default 30, always "
        "run; export: default 180, run when the plain INT8 recipes miss the bar)",
        kwargs={"type": NON_NEGATIVE_FLOAT, "metavar": "SECONDS"},
    ),
    "min_agreement": Flag(
        ("--min-agreement",),
        "also require this top-1 agreement with the float model (the strict rule, e.g. 0.995)",
        kwargs={"type": FRACTION, "metavar": "FRACTION"},
    ),
    "recipes": Flag(
        ("--recipes",),
        "restrict the precision search to these recipes (see edge_cls.export.recipes; default: all), "
        "e.g. ort-qdq-u8s8 ov-nncf-mixed",
        kwargs={"nargs": "+", "metavar": "RECIPE"},
    ),
    "accept_drop": Flag(
        ("--accept-drop",),
        "ship an explicitly requested precision even if it misses --max-drop (the manifest and info say so)",
        kwargs=BOOL,
    ),
    "clip_model": Flag(("--clip-model",), "open_clip model name (e.g. ViT-B-32), or an open_clip config .json",
                       kwargs={"metavar": "NAME"}),
    "clip_pretrained": Flag(
        ("--clip-pretrained",),
        "open_clip weights: a hub tag (e.g. laion2b_s34b_b79k, needs the internet) or a local weights file",
        kwargs={"metavar": "TAG|FILE"},
    ),
    "templates": Flag(("--templates",), "prompt templates, one per line with {} for the class name "
                      "(default: 8 of CLIP's ImageNet templates)", kwargs={"type": Path, "metavar": "FILE"}),
    "taxonomy": Flag(("--taxonomy",), "class hierarchy to store in the artifacts: a parent per class (YAML or JSON "
                     "{class: parent}, or CSV class,parent); answers roll up to ancestors",
                     kwargs={"type": Path, "metavar": "FILE"}),
    "key": Flag(("--key",), "private key to sign with: PEM, EC P-256/384/521 (model-signing's key signer)",
                kwargs={"type": Path, "metavar": "FILE"}),
    # running artifacts
    "topk": Flag(("-k", "--topk"), "classes per image", aliases=("--top-k",), kwargs={"type": COUNT}),
    "backend": Flag(
        ("--backend",),
        "run with another backend than the artifact's (e.g. openvino for an ONNX file)",
        kwargs={"metavar": "NAME"},
    ),
    "json": Flag(("--json",), "machine-readable output", kwargs={"action": "store_true"}),
    "images": Flag(
        ("--images",),
        "a folder of image files (sub-folders named like the artifact's labels make them labelled)",
        kwargs={"type": Path, "metavar": "DIR"},
    ),
    "min_confidence": Flag(
        ("--min-confidence",),
        "answer 'unknown' (or, with a taxonomy, the finest ancestor that clears it) when the top class's "
        "calibrated probability is below this",
        kwargs=PROBABILITY,
    ),
    "raw_scores": Flag(("--raw-scores",), "scores before the artifact's calibration (default: calibrated)",
                       kwargs={"action": "store_true"}),
    "jsonl": Flag(("--jsonl",), "one JSON object per image per line, as results come (for pipelines)",
                  kwargs={"action": "store_true"}),
    "embeddings": Flag(("--embeddings",), "add each image's embedding vector (the artifact's second output: "
                       "normalised, reduced to its stored PCA basis) to the output", kwargs={"action": "store_true"}),
    "embedding_dims": Flag(
        ("--embedding-dims",),
        "artifacts get an embeddings output (pooled features before the head; CLIP's image embedding for "
        "zero-shot), reduced by PCA to N dimensions: 0 turns it off, 'full' keeps every feature",
        kwargs={"type": _dims, "metavar": "N|full"},
    ),
    "min_precision": Flag(("--min-precision",), "multi-label: each class's decision threshold is the lowest whose "
                          "precision on the check images reaches P (default: the F1-optimal threshold)",
                          kwargs=PROBABILITY),
    "groups": Flag(("--groups",), "levels of the suggested class tree, each a number of groups, finer first "
                   "(default: half the classes)", kwargs={"type": COUNT, "nargs": "+", "metavar": "N"}),
    "artifact": Flag(("--artifact",), "an artifact directory (holds manifest.json)",
                     kwargs={"type": Path, "metavar": "DIR"}),
    "like": Flag(("--like",), "find images like this indexed image (its path as indexed)", kwargs={"metavar": "PATH"}),
    "text": Flag(("--text",), "find images matching this text (zero-shot artifacts: CLIP's text tower runs here, "
                 "on the indexing host)", kwargs={"metavar": "TEXT"}),
    "min_score": Flag(("--min-score",), "keep only images whose calibrated score for LABEL is at least P "
                      "(repeatable)", kwargs={"action": "append", "metavar": "LABEL=P"}),
    "limit": Flag(("--limit",), "how many results", kwargs={"type": COUNT}),
    "recursive": Flag(("-r", "--recursive"), "look for images in sub-folders of the folders given",
                      kwargs={"action": "store_true"}),
    "cold_start": Flag(
        ("--cold-start",), "also time a fresh process from start to first answer, and its peak memory", kwargs=BOOL
    ),
    "benchmark_app": Flag(
        ("--benchmark-app",), "also run OpenVINO's benchmark_app on OpenVINO artifacts, side by side", kwargs=BOOL
    ),
    "rounds": Flag(
        ("--rounds",), "repeats of each compared measurement, interleaved round-robin", kwargs={"type": COUNT}
    ),
    # scoring on a cluster
    "engine": Flag(("--engine",), "where to classify: local (this process) or ray (a Ray cluster; Parquet out)",
                   kwargs={"choices": ["local", "ray"]}),
    "address": Flag(("--address",), "Ray cluster to join (auto, ray://head:10001; default: start a local one)",
                    kwargs={"metavar": "ADDR"}),
    "output_format": Flag(("--output-format",), "jsonl (as --jsonl) or parquet (needs --engine ray and --output)",
                          kwargs={"choices": ["jsonl", "parquet"]}),
    "actors": Flag(("--actors",), "inference actors, each loading the artifact once", kwargs={"type": COUNT}),
    "actor_cpus": Flag(("--actor-cpus",), "CPUs per inference actor (fractions allowed); its backend threads follow",
                       kwargs={"type": _positive_float, "metavar": "N"}),
    # serving
    "host": Flag(("--host",), "address to listen on", kwargs={"metavar": "ADDRESS"}),
    "port": Flag(("--port",), "TCP port to listen on (0: any free port)", kwargs={"type": NON_NEGATIVE}),
    "max_queue": Flag(
        ("--max-queue",), "requests admitted at once; more are refused with 503", kwargs={"type": COUNT}
    ),
    "max_upload_mb": Flag(
        ("--max-upload-mb",), "largest upload in MB; larger are refused with 413", kwargs={"type": _positive_float}
    ),
    "bench_iterations": Flag(
        ("--bench-iterations",),
        "timed batch-1 runs per model (default: 100)",
        aliases=("--iterations",),
        kwargs={"type": _int_at_least(1, "iterations")},
    ),
}


def add(parser: argparse.ArgumentParser, name: str, *, default: Any = None, required: bool = False,
        note: str = "") -> None:
    """Add flag ``name`` of the vocabulary (and its hidden aliases) to ``parser``."""
    flag = VOCABULARY[name]
    text = flag.help + (f" ({note})" if note else "")
    parser.add_argument(*flag.names, dest=name, default=default, required=required, help=text, **flag.kwargs)
    for alias in flag.aliases:
        kwargs = {**flag.kwargs, **flag.alias_kwargs}
        parser.add_argument(alias, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_all(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        add(parser, name)
