"""Recipes: the ways edge-cls builds each format at each precision, as typed, named settings.

The fastest INT8 recipe depends on the CPU and the model (ONNX Runtime's S8S8 QDQ is 3-4x slower
than FP32 on squeeze-excite CNNs on x86, U8S8 is faster; on an Intel Xeon with AMX even U8S8 lost
to FP32 on mobilenetv3_large), so edge-cls does not pick one by default: the precision search
(:mod:`edge_cls.quality.selection`) builds the candidates listed here, measures them on this machine
and ships what wins. Every shipped manifest names its recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_cls.errors import ConfigError

from .formats import FORMATS


@dataclass(frozen=True, kw_only=True)
class OrtQuantization:
    """``onnxruntime.quantization.quantize_static`` settings."""

    quant_format: str = "qdq"  # qdq (Q/DQ pairs around float ops) | qoperator (QLinearConv, ...)
    activations: str = "uint8"  # uint8 (asymmetric: ORT's fast x86 path, U8S8) | int8 (S8S8)
    per_channel: bool = True  # per-output-channel weight scales (depthwise convs need them)
    calibration: str = "minmax"  # minmax | percentile (clips outliers; slow on large models) | entropy
    symmetric_activations: bool = False  # what TensorRT's explicit quantization needs
    nodes_to_exclude: tuple[str, ...] = ()  # kept in float (accuracy restoration fills this)
    bias_correction: bool = False  # biases moved to cancel the mean error INT8 adds (export/bias_correction.py)


@dataclass(frozen=True, kw_only=True)
class NncfQuantization:
    """``nncf.quantize`` settings (OpenVINO IR or ONNX)."""

    preset: str = "mixed"  # mixed (asymmetric activations: keeps hard-swish/SiLU tails) | performance
    fast_bias_correction: bool = False  # NNCF's tables: MobileNetV3 loses far more top-1 with the fast one
    channel_alignment: bool = False  # NNCF's channel alignment (OpenVINO backend; off by NNCF's default)
    transformer: bool = False  # model_type=TRANSFORMER (+ SmoothQuant): for ViTs
    accuracy_control: bool = False  # nncf.quantize_with_accuracy_control, bounded (see MAX_ACCURACY_ITERATIONS)


@dataclass(frozen=True, kw_only=True)
class Distillation:
    """Quantization-aware distillation: fake-quantize the float model (``nncf.quantize`` on PyTorch),
    fine-tune it against the float model's soft targets (and a teacher's, where the build has one)
    with BatchNorm folded and frozen and dropout off, then export the quantized graph."""

    max_seconds: float = 180.0  # the fine-tuning stops at this wall time (or after max_steps)
    max_steps: int = 300
    lr: float = 1e-5
    batch_size: int = 16
    temperature: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One way to build ``format`` at ``precision``; ``runtime`` options go into the manifest."""

    name: str
    format: str
    precision: str
    summary: str
    ort: OrtQuantization | None = None
    nncf: NncfQuantization | None = None
    distill: Distillation | None = None  # quantization-aware distillation from the PyTorch model
    equalize: bool = False  # cross-layer equalization of the FP32 graph first (edge_cls.export.equalize)
    restores: bool = False  # built only when the plain INT8 recipes miss the bar (or when asked to always)
    runtime: dict[str, str] = field(default_factory=dict)  # e.g. {"inference_precision": "bf16"}
    compress_weights_fp16: bool = False  # OpenVINO: FP16 weights in the .bin (half the file)

    def __post_init__(self) -> None:
        fmt = FORMATS.get(self.format)
        if fmt is None or self.precision not in fmt.precisions:
            raise ValueError(f"recipe {self.name}: {self.format!r} has no precision {self.precision!r}")
        if self.precision == "int8" and not (self.ort or self.nncf or self.distill or self.name == "ort-restore"):
            raise ValueError(f"recipe {self.name}: an INT8 recipe names its quantizer (ort, nncf or distill)")

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


def _onnx_recipes() -> list[Recipe]:
    """ONNX Runtime: FP32, FP16, and INT8 by ORT's quantizer, NNCF, equalization, distillation, fallback."""
    return [
        Recipe(name="ort-fp32", format="onnx", precision="fp32", summary="the FP32 ONNX file"),
        Recipe(name="ort-fp16", format="onnx", precision="fp16",
               summary="FP16 weights and compute, FP32 input/output (onnxruntime.transformers.float16)"),
        Recipe(name="ort-qdq-u8s8", format="onnx", precision="int8",
               summary="static QDQ, uint8 activations, int8 per-channel weights, min-max",
               ort=OrtQuantization()),
        Recipe(name="ort-qop-u8s8", format="onnx", precision="int8",
               summary="static QOperator (QLinearConv...), uint8 activations, int8 per-channel weights, min-max",
               ort=OrtQuantization(quant_format="qoperator")),
        Recipe(name="ort-qdq-u8s8-pct", format="onnx", precision="int8",
               summary="static QDQ, uint8 activations, int8 per-channel weights, percentile calibration (clips "
               "outliers; slower to build on large models)",
               ort=OrtQuantization(calibration="percentile")),
        Recipe(name="ort-qdq-s8s8", format="onnx", precision="int8",
               summary="static QDQ, int8 activations and per-channel weights, min-max (ORT's fast form on ARM; "
               "slow on x86 CPUs without VNNI-friendly S8S8 kernels)",
               ort=OrtQuantization(activations="int8")),
        Recipe(name="ort-nncf", format="onnx", precision="int8",
               summary="NNCF's ONNX backend (QDQ), MIXED preset, full bias correction",
               nncf=NncfQuantization()),
        Recipe(name="ort-qdq-u8s8-cle", format="onnx", precision="int8", restores=True, equalize=True,
               summary="cross-layer equalization of the FP32 graph, then static QDQ U8S8 per-channel, min-max",
               ort=OrtQuantization()),
        Recipe(name="ort-qdq-u8s8-bc", format="onnx", precision="int8", restores=True,
               summary="static QDQ U8S8 per-channel, min-max, with bias correction: each Conv/Gemm bias cancels the "
               "mean error INT8 weights and inputs add to its output",
               ort=OrtQuantization(bias_correction=True)),
        Recipe(name="ort-qdq-u8s8-pct-bc", format="onnx", precision="int8", restores=True,
               summary="static QDQ U8S8 per-channel, percentile calibration, with bias correction",
               ort=OrtQuantization(calibration="percentile", bias_correction=True)),
        Recipe(name="ort-qad", format="onnx", precision="int8", restores=True, distill=Distillation(),
               summary="quantization-aware distillation: NNCF fake-quantized PyTorch model fine-tuned against the "
               "float model's soft targets, exported as QDQ"),
        Recipe(name="ort-restore", format="onnx", precision="int8", restores=True,
               summary="the most accurate ORT-quantizer recipe with the units that hurt the answer most kept in "
               "float (a layer, or a layer and the layers reading its output, with the activation between them), "
               "the top 1, 2, 4, 8, ranked once by leave-one-out KL on calibration images, quantized with the ranges "
               "of one calibration (bounded)"),
    ]


def _openvino_recipes() -> list[Recipe]:
    """OpenVINO: FP32, FP16 weights, bf16, and INT8 by NNCF or ORT's Q/DQ graph, with recoveries."""
    return [
        Recipe(name="ov-fp32", format="openvino", precision="fp32", summary="FP32 IR, run in f32",
               runtime={"inference_precision": "f32"}),
        Recipe(name="ov-fp16", format="openvino", precision="fp16",
               summary="FP16 weights in the IR (half the file), computed in f32",
               runtime={"inference_precision": "f32"}, compress_weights_fp16=True),
        Recipe(name="ov-bf16", format="openvino", precision="bf16", summary="FP32 IR run in bf16 (CPUs with bf16)",
               runtime={"inference_precision": "bf16"}),
        Recipe(name="ov-nncf-mixed", format="openvino", precision="int8",
               summary="NNCF INT8, MIXED preset, full bias correction, float parts in f32",
               nncf=NncfQuantization(), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-nncf-mixed-bf16", format="openvino", precision="int8",
               summary="NNCF INT8, MIXED preset, full bias correction, float parts in bf16",
               nncf=NncfQuantization(), runtime={"inference_precision": "bf16"}),
        Recipe(name="ov-nncf-performance", format="openvino", precision="int8",
               summary="NNCF INT8, PERFORMANCE preset (symmetric), full bias correction, float parts in f32",
               nncf=NncfQuantization(preset="performance"), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-ort-qdq", format="openvino", precision="int8",
               summary="ONNX Runtime's QDQ U8S8 model (min-max) converted to an IR: OpenVINO runs the Q/DQ pairs as "
               "its own INT8 (kept the answer better than NNCF on EfficientNet-Lite here)",
               ort=OrtQuantization(), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-nncf-accuracy", format="openvino", precision="int8", restores=True,
               summary="NNCF INT8 with accuracy control: layers reverted to float until the bar is met (bounded)",
               nncf=NncfQuantization(accuracy_control=True), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-nncf-aligned", format="openvino", precision="int8", restores=True,
               summary="NNCF INT8, MIXED preset, full bias correction and channel alignment, float parts in f32",
               nncf=NncfQuantization(channel_alignment=True), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-nncf-cle", format="openvino", precision="int8", restores=True, equalize=True,
               summary="cross-layer equalization of the FP32 graph, then NNCF INT8 MIXED, full bias correction",
               nncf=NncfQuantization(), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-ort-qdq-cle", format="openvino", precision="int8", restores=True, equalize=True,
               summary="cross-layer equalization of the FP32 graph, then ONNX Runtime's QDQ U8S8 (min-max) converted "
               "to an IR", ort=OrtQuantization(), runtime={"inference_precision": "f32"}),
        Recipe(name="ov-ort-qdq-pct-bc", format="openvino", precision="int8", restores=True,
               summary="ONNX Runtime's QDQ U8S8 model (percentile calibration) with bias correction, converted to "
               "an IR", ort=OrtQuantization(calibration="percentile", bias_correction=True),
               runtime={"inference_precision": "f32"}),
        Recipe(name="ov-qad", format="openvino", precision="int8", restores=True, distill=Distillation(),
               summary="quantization-aware distillation (as ort-qad), the QDQ graph compiled by OpenVINO",
               runtime={"inference_precision": "f32"}),
    ]


def _tensorrt_recipes() -> list[Recipe]:
    """TensorRT: engines built from ONNX graphs that carry their precision."""
    return [
        Recipe(name="trt-fp32", format="tensorrt", precision="fp32", summary="TensorRT engine, TF32 off"),
        Recipe(name="trt-fp16", format="tensorrt", precision="fp16", summary="TensorRT engine, FP16 kernels"),
        Recipe(name="trt-int8", format="tensorrt", precision="int8",
               summary="TensorRT explicit INT8 from symmetric QDQ (ONNX Runtime calibration)",
               ort=OrtQuantization(activations="int8", symmetric_activations=True)),
    ]


def _recipes() -> dict[str, Recipe]:
    return {r.name: r for r in (*_onnx_recipes(), *_openvino_recipes(), *_tensorrt_recipes())}


RECIPES: dict[str, Recipe] = _recipes()


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def check_names(names: tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """The one check of recipe names a user gives (``--recipes``, a config's ``recipes``)."""
    if names is None:
        return None
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise ConfigError(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    return tuple(names)


def candidates(fmt: str, precisions: list[str], *, transformer: bool = False, bf16: bool = False,
               only: list[str] | None = None) -> list[Recipe]:
    """The recipes to build for ``fmt`` so that every precision in ``precisions`` (``auto`` = all)
    can be chosen; FP32 (the speed and parity reference) is always among them.

    ``transformer`` switches NNCF to its transformer scheme; ``bf16`` says the CPU runs bf16 (no
    bf16 recipes otherwise: they would run in f32 and only repeat FP32); ``only`` restricts the
    low-precision recipes to those names (e.g. for a quick test)."""
    wanted = set(precisions)
    chosen = []
    for r in RECIPES.values():
        if r.format != fmt or r.restores:
            continue
        if r.precision != "fp32" and "auto" not in wanted and r.precision not in wanted:
            continue
        if only and r.precision != "fp32" and r.name not in only:
            continue
        if not bf16 and (r.precision == "bf16" or r.runtime.get("inference_precision") == "bf16"):
            continue
        if r.nncf is not None and transformer:
            r = _for_transformers(r)
        chosen.append(r)
    return chosen


def _for_transformers(r: Recipe) -> Recipe:
    from dataclasses import replace

    return replace(r, nncf=replace(r.nncf or NncfQuantization(), transformer=True),
                   summary=r.summary + "; transformer scheme (model_type=TRANSFORMER, SmoothQuant)")
