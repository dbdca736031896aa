"""PyTorch -> ONNX (FP32) with a dynamic batch axis and the spec and labels in ``metadata_props``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_cls.errors import ExportError
from edge_cls.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

OPSET = 18
METADATA_SPEC = "edge_cls.preprocess"
METADATA_LABELS = "edge_cls.labels"


def export_onnx(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    labels: list[str],
    path: Path,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    extra_outputs: tuple[str, ...] = (),
    exporter: str = "dynamo",
) -> Path:
    """Export ``model`` to ``path``; ``exporter`` is ``dynamo`` (torch.export) or ``torchscript``.
    A model that returns a tuple (logits, then e.g. embeddings) names its further outputs ``extra_outputs``.

    The example input has batch 2: a batch-1 example lets torch.export specialise the batch
    dimension to a constant.
    """
    model = model.eval()
    outputs = [output_name, *extra_outputs]
    example = torch.zeros(2, *spec.input_shape)
    quiet = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet):
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model, (example,), None, dynamo=True, input_names=[input_name], output_names=outputs,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=OPSET,
                    verbose=False,
                )
                proto = program.model_proto
            elif exporter == "torchscript":
                buffer = io.BytesIO()
                torch.onnx.export(
                    model, (example,), buffer, dynamo=False, input_names=[input_name], output_names=outputs,
                    dynamic_axes={name: {0: "batch"} for name in (input_name, *outputs)}, opset_version=OPSET,
                )
                proto = onnx.load_from_string(buffer.getvalue())
            else:
                raise ExportError(f"unknown ONNX exporter {exporter!r}; use 'dynamo' or 'torchscript'")
        proto = _slim(proto, np.random.default_rng(0).standard_normal((2, *spec.input_shape)).astype(np.float32))
        set_metadata(proto, spec, labels)
        onnx.checker.check_model(proto)
    except ExportError:
        raise
    except Exception as e:  # the exporters and the checker raise many types
        raise ExportError(f"ONNX export of {type(model).__name__} failed ({type(e).__name__}: {e})") from e
    onnx.save_model(proto, str(path))
    return path


def set_metadata(proto: onnx.ModelProto, spec: PreprocessSpec, labels: list[str]) -> None:
    """Store the spec and labels in the model's ``metadata_props``, so the file alone is usable."""
    entries = {METADATA_SPEC: json.dumps(spec.to_dict()), METADATA_LABELS: json.dumps(list(labels))}
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _slim(proto: onnx.ModelProto, example: np.ndarray) -> onnx.ModelProto:
    """Fold constants and fuse what onnxslim can, if the result still computes the same thing.

    onnxslim has been seen to mis-fold the dynamic "same"-padding arithmetic of timm's ``tf_*``
    models exported by the TorchScript exporter (EfficientNet-Lite1: logits off by 2.4, top-1
    agreement 83%), so the slimmed graph is run beside the original on ``example`` and kept only
    when they agree; otherwise the graph is kept as exported, with a warning.
    """
    try:
        import onnxslim
    except ImportError:
        return proto
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slimmed = onnxslim.slim(proto)
    except Exception as e:  # a failed clean-up must not fail the export
        logger.warning("onnxslim could not simplify the graph (%s); keeping it as exported", e)
        return proto
    before, after = _run(proto, example), _run(slimmed, example)
    if after is None or before is None or not all(
            np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()) for a, b in zip(after, before)):
        logger.warning("onnxslim changed what the graph computes; keeping it as exported (unslimmed)")
        return proto
    return slimmed


def _run(proto: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray] | None:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: batch})
    except Exception:  # a graph ORT cannot run is no evidence either way
        return None


def copy_metadata(source: Path, target: Path) -> None:
    metadata = onnx.load(str(source), load_external_data=False).metadata_props
    model = onnx.load(str(target))
    keys = {p.key for p in metadata}
    kept = [p for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.extend(metadata)
    onnx.save_model(model, str(target))
