"""Configuration: the dataclasses that describe a run, and the files (YAML or TOML) that set them.

Torch-free, so the command line resolves and checks a whole config (file, then flags) before any
heavy import. :class:`BuildConfig` describes ``edge-cls build``/``distill``/``finetune-teacher``:
top-level keys for data, models and export, and sections ``teacher_train``, ``student_train``
(:class:`TrainConfig`) and ``distill`` (:class:`DistillConfig`). Command-line flags override the
file; the resolved config is written beside the checkpoints as ``config.yaml``. Unknown keys are
errors that name the key and list the valid ones: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge_cls._fileio import read_user_text
from edge_cls.errors import ConfigError

T = TypeVar("T")


AMP_MODES = ("auto", "off", "bf16", "fp16")
BALANCE_MODES = ("none", "weighted", "sampler")
DISTILL_KINDS = ("logit", "hard", "feature")
DEMO_TEACHER = "vit_convstem_tiny"
DEMO_STUDENT = "mobilenetv3_small_100"
DEMO_INPUT_SIZE = 64


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: schedule, augmentation, regularisation, infrastructure."""

    epochs: int = 10
    batch_size: int = 64  # per process
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # any timm.optim name
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.0  # digits and text must not be mirrored; 0.5 suits natural images
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    ema_decay: float = 0.0  # EMA of the weights (e.g. 0.999; 0: off); the EMA model is the result
    clip_grad: float = 0.0  # max gradient norm (0: off)
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, off on CPU; or off, bf16, fp16
    balance: str = "none"  # none, weighted (class-weighted loss), sampler (class-balanced sampling)
    sizes: tuple[int, ...] = ()  # progressive resizing, e.g. (48, 56, 64); the last is the export size
    freeze_backbone: bool = False  # train the classifier head only
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        _at_least(self, "epochs", 1)
        _at_least(self, "batch_size", 1)
        _at_least(self, "warmup_epochs", 0)
        _at_least(self, "workers", 0)
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"scale must be two fractions 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.mixup < 0 or self.cutmix < 0 or self.clip_grad < 0:
            raise ConfigError("mixup, cutmix and clip_grad must not be negative")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"Mixup/CutMix need an even batch size, got {self.batch_size}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if any(s < 8 for s in self.sizes):
            raise ConfigError(f"progressive sizes must be at least 8 pixels, got {list(self.sizes)}")

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How the student learns from the teacher.

    ``logit``: loss = task_weight * CE(labels) + distill_weight * T^2 * KL(teacher_T || student_T)
    (sigmoid/BCE targets for multi-label data). ``hard``: DeiT's hard-label KD,
    task_weight * CE(labels) + distill_weight * CE(teacher's argmax). ``feature``: MSE between the
    student's (projected) and the teacher's pooled features, plus the label loss.
    ``cache_teacher``: run the teacher once over un-augmented training images and distil from
    those logits: the teacher costs one pass instead of one per epoch, but its targets no longer
    match the augmented view the student sees (no function matching, no Mixup), which Beyer et
    al. found clearly worse on long schedules. For weak machines only.
    """

    kind: str = "logit"
    temperature: float = 4.0
    distill_weight: float = 1.0
    task_weight: float = 1.0
    cache_teacher: bool = False

    def __post_init__(self) -> None:
        if self.kind not in DISTILL_KINDS:
            raise ConfigError(f"distill kind must be one of {', '.join(DISTILL_KINDS)}, got {self.kind!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.distill_weight < 0 or self.task_weight < 0:
            raise ConfigError("loss weights must not be negative")
        if self.cache_teacher and self.kind != "logit":
            raise ConfigError("cache_teacher works with logit distillation only (kind: logit)")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything ``edge-cls build``/``distill``/``finetune-teacher`` do; the defaults run the offline demo."""

    out_dir: Path = Path("build/demo")
    data_dir: Path | None = None  # train/ val/ test/ ImageFolders or train/val/test.csv; None: the demo set
    teacher: str = DEMO_TEACHER
    teacher_weights: Path | None = None  # edge-cls checkpoint, or .pth/.safetensors state dict
    teacher_pretrained: bool = False  # start the teacher from hub weights
    teacher_finetune: bool | None = None  # fine-tune on the labels first; None: unless weights fit the classes
    teacher_input_size: int | None = None  # None: input_size
    student: str = DEMO_STUDENT
    student_pretrained: bool = False
    student_weights: Path | None = (
        None  # local weights to start the student from (a head for other classes is replaced)
    )
    input_size: int = DEMO_INPUT_SIZE
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=9, lr=1.5e-3))
    student_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=3e-3))
    distill: DistillConfig = field(default_factory=DistillConfig)
    compare_alone: bool = True  # also train the student on labels alone, same budget and initial weights
    resume: bool = False  # continue interrupted stages; finished stages are loaded, not retrained
    device: str | None = None  # cpu, cuda; None: CUDA when available
    formats: tuple[str, ...] = ("onnx", "openvino")
    precisions: tuple[str, ...] = ("auto",)  # auto: per format, the fastest candidate that keeps the answer
    max_drop: float = 0.3  # points of top-1 accuracy a low-precision artifact may be expected to lose (checked by
    # edge_cls.quality.acceptance.AcceptanceRule, with the recipe names, when a build starts)
    accept_drop: bool = False  # ship an explicitly requested precision that misses max_drop (marked)
    defer_choice: bool = False  # write a candidate bundle for the device to choose from (edge-cls choose)
    qad_seconds: float = 30.0  # quantization-aware distillation's fine-tuning cap (0: none); a build always runs it
    calibration_size: int = 300
    calib_augment: bool = False  # add flipped/cropped views when the calibration split is small
    recipes: tuple[str, ...] = ()  # restrict the precision search to these recipes (empty: every recipe)
    taxonomy: Path | None = None  # parent per class (YAML, JSON or CSV): artifacts answer up the tree
    embedding_dims: int | str = 64  # the artifacts' embeddings output: PCA dims, "full", or 0 (none)
    min_precision: float | None = None  # multi-label thresholds: the lowest reaching this precision (None: F1)
    bench_iterations: int = 100
    onnx_exporter: str = "dynamo"

    def __post_init__(self) -> None:
        _at_least(self, "input_size", 8)
        if self.teacher_input_size is not None:
            _at_least(self, "teacher_input_size", 8)
        _at_least(self, "calibration_size", 1)
        _at_least(self, "bench_iterations", 1)
        dims = self.embedding_dims
        if dims != "full" and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 0):
            raise ConfigError(f"embedding_dims must be a number >= 0 (0: no embeddings) or 'full', got {dims!r}")
        if self.min_precision is not None and not 0 <= self.min_precision <= 1:
            raise ConfigError(f"min_precision is a precision in [0, 1], got {self.min_precision!r}")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.onnx_exporter not in ("dynamo", "torchscript"):
            raise ConfigError(f"onnx_exporter must be dynamo or torchscript, got {self.onnx_exporter!r}")


def _at_least(config: Any, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    text = read_user_text(path, "config file", ConfigError)
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as e:  # yaml and tomllib raise their own error types
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, not {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` on top of ``base``, section by section; None means "not given"."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None or (isinstance(value, dict) and all(v is None for v in value.values())):
            continue  # not given (a section with no flags set must not hide what the file says)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if v is not None}
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from plain data, recursing into dataclass fields and coercing
    lists to tuples and strings to paths as the annotations say."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {where}; valid: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if hint is Path:
        return Path(value) if value is not None else None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def to_plain(value: Any) -> Any:
    """Dataclasses, paths and tuples to YAML-friendly dicts, strings and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def dump_yaml(config: Any) -> str:
    import yaml

    return yaml.safe_dump(to_plain(config), sort_keys=False)
