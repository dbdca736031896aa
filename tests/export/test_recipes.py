"""The recipe table is the single source of truth: what it says is checked against the format table and
reaches the builders; ONNX Runtime's layer fallback calibrates once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_cls.errors import ConfigError
from edge_cls.export.recipes import RECIPES, OrtQuantization, Recipe, candidates, check_names


def test_a_recipe_must_name_a_format_precision_and_quantizer_the_tables_know():
    with pytest.raises(ValueError, match="has no precision 'bf16'"):
        Recipe(name="x", format="onnx", precision="bf16", summary="")
    with pytest.raises(ValueError, match="names its quantizer"):
        Recipe(name="x", format="onnx", precision="int8", summary="")
    with pytest.raises(ConfigError, match="unknown recipe"):
        check_names(["ort-qdq-u8s8", "ort-typo"])


def test_restoring_recipes_are_marked_by_a_field_and_built_on_demand():
    restoring = {name for name, r in RECIPES.items() if r.restores}
    assert {"ort-restore", "ov-nncf-accuracy", "ort-qad", "ov-qad", "ort-qdq-u8s8-cle", "ov-nncf-cle"} <= restoring
    plain = {r.name for fmt in ("onnx", "openvino") for r in candidates(fmt, ["auto"], bf16=True)}
    assert not plain & restoring and "ov-ort-qdq" in plain


def _scales(path) -> dict[str, float]:
    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(initializers[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and initializers[n.input[1]].size == 1}


def test_layer_fallback_quantizes_with_the_ranges_of_one_calibration(artifacts, tmp_path, tiny_checkpoint, digits_root):
    """The calibration cache written by the first quantization is what later ones use: a different
    calibration set then gives the same activation scales, where calibrating again would not."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits
    from edge_cls.export.onnxruntime_export import quantize_onnx_int8
    from edge_cls.training.checkpoints import Checkpoint

    spec = Checkpoint.load(tiny_checkpoint).spec
    splits = load_splits(digits_root)
    first = CalibrationSet.from_split(splits["train"], spec, size=16, seed=1)
    other = CalibrationSet.from_split(splits["val"], spec, size=16, seed=2)
    source, ranges = artifacts["onnx-fp32"] / "model.onnx", tmp_path / "ranges.json"
    settings = OrtQuantization()
    a = quantize_onnx_int8(source, tmp_path / "a.onnx", first, settings=settings, ranges=ranges)
    assert ranges.is_file()
    b = quantize_onnx_int8(source, tmp_path / "b.onnx", other, settings=settings, ranges=ranges)
    fresh = quantize_onnx_int8(source, tmp_path / "c.onnx", other, settings=settings)
    assert _scales(a) == _scales(b)
    assert _scales(fresh) != _scales(a)
    assert np.isfinite(list(_scales(a).values())).all()
