"""Quantization-aware distillation: recover what post-training INT8 loses by fine-tuning the
fake-quantized model against the float model's answers.

1. BatchNorm is folded into the convolutions before anything is quantized (its statistics are then
   frozen by construction, and the exported graph has no BatchNorm between a weight's Q/DQ and its
   convolution); the fold is checked numerically.
2. ``nncf.quantize`` inserts fake quantizers into the PyTorch model and calibrates them (MIXED
   preset: asymmetric activations), and ``nncf.strip`` turns them into PyTorch's own FakeQuantize
   modules (their observers off: the ranges stay NNCF's). PyTorch's native fake-quantization kernels
   fine-tune about twice as fast as NNCF's on a CPU (EfficientNet-Lite1, measured here).
3. The fake-quantized model is fine-tuned in eval mode (dropout off) against the float model's soft
   targets (KL at a temperature; where the build has a teacher, its soft targets are averaged in),
   on the training images in ``build`` or the unlabelled calibration images in ``export``: the float
   model is its own teacher. The wall time and the number of steps are capped.
4. The TorchScript ONNX exporter writes the FakeQuantize modules as QuantizeLinear/DequantizeLinear
   pairs: a QDQ graph ONNX Runtime and OpenVINO both run as INT8. The exported graph is checked
   against the fake-quantized model.

NNCF runs the fine-tuning loop if we write it (its own training samples do); this module is that
loop, bounded, so users get it without writing one.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_cls.calibration_data import CalibrationSet
from edge_cls.errors import ExportError
from edge_cls.progress import library_output

from .recipes import Distillation

logger = logging.getLogger(__name__)

Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, "np.ndarray | None"]]


@dataclass(frozen=True)
class TuningData:
    """What the fine-tuning draws from: ``sample(rng, n)`` gives ``n`` preprocessed images and, where a
    teacher is used, its logits on them (else None)."""

    sample: Sampler
    description: str

    @classmethod
    def from_calibration(cls, calibration: CalibrationSet) -> TuningData:
        """The unlabelled calibration images (``edge-cls export``): the float model is the only teacher."""
        def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
            return calibration.array[rng.integers(0, len(calibration), n)], None

        return cls(sample, f"{len(calibration)} calibration images")


@dataclass
class DistillationRun:
    """What one quantization-aware distillation did."""

    steps: int = 0
    seconds: float = 0.0
    loss_first: float = float("nan")  # mean over the first third of the steps
    loss_last: float = float("nan")  # and over the last third
    folded_batchnorms: int = 0
    export_max_abs_error: float = float("nan")
    data: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f"qad_{k}": v for k, v in vars(self).items() if k != "extra"} | self.extra


def fold_batchnorms(model: torch.nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution (sibling modules, in order) into it,
    in place; a timm BatchNormAct keeps its activation. Returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, torch.nn.Conv2d) and type(conv) is torch.nn.Conv2d
                    and isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(parent, bn_name, _after_batchnorm(bn))
                folded += 1
    return folded


def _after_batchnorm(bn: torch.nn.BatchNorm2d) -> torch.nn.Module:
    """What is left of a BatchNorm once folded: timm's BatchNormAct2d keeps its dropout and activation."""
    parts = [m for name in ("drop", "act") if isinstance(m := getattr(bn, name, None), torch.nn.Module)]
    return torch.nn.Sequential(*parts) if parts else torch.nn.Identity()


# NNCF compiles its CPU fake-quantization kernels on first use (about a minute on 2 cores, then cached
# in ~/.cache/torch_extensions) and gives up after 60 s by default, which a busy machine exceeds; a
# user's own setting wins.
EXTENSION_TIMEOUT_SECONDS = "900"


def distill_quantized(model: torch.nn.Module, calibration: CalibrationSet, tuning: TuningData, settings: Distillation,
                      out: Path, *, seed: int = 0) -> DistillationRun:
    """Fake-quantize ``model``, fine-tune it against the float model, export the QDQ graph to ``out``."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_TIMEOUT_SECONDS)
    import nncf

    run = DistillationRun(data=tuning.description)
    reference = copy.deepcopy(model).eval().float()
    student = copy.deepcopy(reference)
    run.folded_batchnorms = fold_batchnorms(student)
    example = torch.from_numpy(calibration.array[:2])
    with torch.no_grad():
        expected = reference(example)
        drift = float((student(example) - expected).abs().max())
    if drift > 1e-3 * max(1.0, float(expected.abs().max())):
        raise ExportError(f"folding BatchNorm changed the model's logits by {drift:.3g}: cannot distil it quantized")
    nncf.set_log_level(logging.WARNING)
    try:
        with library_output():
            batches = [torch.from_numpy(b) for b in calibration.batches(8)]  # NNCF counts items: batches here
            quantized = nncf.quantize(student, nncf.Dataset(batches), subset_size=len(batches),
                                      preset=nncf.QuantizationPreset.MIXED)
            native = nncf.strip(quantized, do_copy=False, example_input=example[:1])
    except Exception as e:  # NNCF raises many types
        raise ExportError(f"NNCF could not fake-quantize the model ({type(e).__name__}: {e})") from e
    native.apply(torch.ao.quantization.disable_observer)  # the ranges stay the calibrated ones
    _fine_tune(native, reference, tuning, settings, run, seed)
    _export_qdq(native, example, out, run)
    return run


def _fine_tune(quantized: torch.nn.Module, reference: torch.nn.Module, tuning: TuningData, settings: Distillation,
               run: DistillationRun, seed: int) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    quantized.eval()  # dropout off, no statistics to update: BatchNorm is folded
    optimizer = torch.optim.AdamW([p for p in quantized.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.0)
    started, t, losses = time.perf_counter(), settings.temperature, []
    while run.steps < settings.max_steps and time.perf_counter() - started < settings.max_seconds:
        images, teacher_logits = tuning.sample(rng, settings.batch_size)
        batch = torch.from_numpy(np.ascontiguousarray(images))
        with torch.no_grad():
            target = torch.softmax(reference(batch) / t, dim=1)
            if teacher_logits is not None:
                target = 0.5 * (target + torch.softmax(torch.from_numpy(teacher_logits) / t, dim=1))
        log_probs = torch.log_softmax(quantized(batch) / t, dim=1)
        loss = torch.nn.functional.kl_div(log_probs, target, reduction="batchmean") * t * t
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        run.steps += 1
    run.seconds = time.perf_counter() - started
    third = max(1, len(losses) // 3)  # single batches are noisy: the first and the last third, averaged
    run.loss_first, run.loss_last = float(np.mean(losses[:third])), float(np.mean(losses[-third:]))
    logger.info("quantization-aware distillation: %d steps in %.0f s, KL %.4g -> %.4g", run.steps, run.seconds,
                run.loss_first, run.loss_last)


def _export_qdq(stripped: torch.nn.Module, example: torch.Tensor, out: Path, run: DistillationRun) -> None:
    import onnxruntime as ort

    try:
        buffer = io.BytesIO()
        with torch.no_grad(), library_output():
            torch.onnx.export(stripped, (example,), buffer, dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=18)
    except Exception as e:  # NNCF and the exporter raise many types
        raise ExportError(f"the distilled INT8 model could not be exported ({type(e).__name__}: {e})") from e
    out.write_bytes(buffer.getvalue())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = stripped(example).numpy()
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    run.export_max_abs_error = float(np.abs(got - expected).max())
