"""Both sides of INT8, on a model trained here: INT8 that keeps its answers ships; INT8 whose answers
a function-preserving rescale has damaged is refused naively and repaired by equalization; and
quantization-aware distillation runs bounded, its artifact equal to its fake-quantized model."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edge_cls.calibration_data import CalibrationSet
from edge_cls.data import load_splits, preprocess_split
from edge_cls.errors import ExportError
from edge_cls.export import AcceptanceRule, ReferenceSet, SearchSettings, export_artifacts, resolve_targets
from edge_cls.preprocess import PreprocessSpec

pytestmark = pytest.mark.slow
SPEC = PreprocessSpec(input_size=(32, 32))
OUTLIER = 3  # the projection channel scaled by 64


class Projected(nn.Module):
    """A stem, a linear projection (conv + BatchNorm, no activation) feeding one convolution only, a head."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.expand = nn.Sequential(nn.Conv2d(8, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expand(self.project(self.stem(x))))


def rescaled(model: Projected, channel: int = OUTLIER, factor: float = 64.0) -> Projected:
    """Multiply one projection channel (BatchNorm weight and bias) by ``factor`` and divide the next
    convolution's matching input channel by it: with a power of two the function is unchanged, exactly."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.project[1].weight[channel] *= factor
        out.project[1].bias[channel] *= factor
        out.expand[0].weight[:, channel] /= factor
    return out


@pytest.fixture(scope="module")
def trained(demo_root):
    splits = load_splits(demo_root)
    train, train_targets = preprocess_split(splits["train"], SPEC)
    torch.manual_seed(0)
    model = Projected()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    for _ in range(2):
        for index in torch.randperm(len(train)).split(64):
            logits = model(torch.from_numpy(train[index]))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(train_targets[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    val, val_targets = preprocess_split(splits["val"], SPEC)
    calibration = CalibrationSet.from_split(splits["train"], SPEC, size=64)
    return model, splits["train"].classes, (val, val_targets), calibration


def export(model, trained, out, *, precisions=("int8",), formats=("onnx", "openvino"), **search):
    _, labels, (val, targets), calibration = trained
    settings = SearchSettings(rule=AcceptanceRule(max_drop=0.3), rounds=3, block=3, **search)
    return export_artifacts(model, SPEC, labels, out, resolve_targets(list(formats), list(precisions)),
                            reference=ReferenceSet.from_model(model, val, targets, name="val"),
                            calibration=calibration, search=settings)


def test_int8_that_keeps_its_answers_ships(trained, tmp_path):
    model = trained[0]
    assert (model(torch.from_numpy(trained[2][0])).argmax(1).numpy() == trained[2][1]).mean() > 0.6  # trained briefly
    for artifact in export(model, trained, tmp_path, only=("ort-qdq-u8s8", "ov-nncf-mixed"), restore="never"):
        parity = artifact.manifest.parity
        assert artifact.manifest.precision == "int8" and not artifact.manifest.accepted_drop
        assert parity["drop_high_points"] <= 0.3 and parity["pictures"] == 500


def test_the_rescaled_outlier_never_ships_naively_and_equalization_repairs_it(trained, tmp_path):
    model = trained[0]
    broken = rescaled(model)
    batch = torch.from_numpy(trained[2][0][:64])
    assert torch.equal(broken(batch), model(batch))  # the float model is unchanged, bit for bit
    with pytest.raises(ExportError, match="no int8 recipe meets the rule"):
        export(broken, trained, tmp_path / "naive", only=("ort-qdq-u8s8", "ov-nncf-mixed"), restore="never")
    repaired = export(broken, trained, tmp_path / "repaired", only=("ort-qdq-u8s8", "ort-qdq-u8s8-cle", "ov-nncf-mixed",
                                                                    "ov-nncf-cle", "ov-ort-qdq-cle"))
    for artifact in repaired:
        rows = {row["recipe"]: row for row in artifact.manifest.search["candidates"]}
        assert artifact.manifest.recipe.endswith("-cle"), rows
        naive = rows["ort-qdq-u8s8" if artifact.target.format.name == "onnx" else "ov-nncf-mixed"]
        assert naive["verdict"] == "misses bar" and naive["expected_drop"] > 0.3
        assert artifact.manifest.parity["drop_high_points"] <= 0.3
    auto = export(broken, trained, tmp_path / "auto", precisions=("auto",), only=("ort-qdq-u8s8", "ov-nncf-mixed"),
                  restore="never")
    for artifact in auto:  # whatever auto ships, it is within the bar (here: FP32, as no INT8 is)
        assert artifact.manifest.parity["drop_high_points"] <= 0.3


def test_quantization_aware_distillation_is_bounded_and_its_artifact_equals_its_fake_quant_model(trained, tmp_path):
    from edge_cls.export.recipes import RECIPES

    model = rescaled(trained[0])  # something to recover
    budget = replace(RECIPES["ort-qad"].distill, max_seconds=15.0, max_steps=60, lr=1e-4)
    artifacts = export(model, trained, tmp_path, only=("ort-qad", "ov-qad"), restore="always", accept_drop=True,
                       distill_budget=budget)
    for artifact in artifacts:
        assert artifact.manifest.recipe in ("ort-qad", "ov-qad")
        row = next(r for r in artifact.manifest.search["candidates"] if r["recipe"] == artifact.manifest.recipe)
        assert 0 < row["qad_steps"] <= 60 and row["qad_seconds"] <= 15.0 + 5
        assert row["qad_export_max_abs_error"] < 1e-2  # the QDQ graph computes what the fake-quant model did
        assert row["qad_loss_last"] < row["qad_loss_first"]  # it learned
        assert np.isfinite(row["expected_drop"])


def _damaged(model: Projected, channel: int = 5) -> Projected:
    """One input channel of the projection made dead (the stem's BatchNorm bias far below zero, so the
    ReLU before it always outputs 0) and its projection weights 1000: the float model does not notice,
    but every per-channel weight scale of the projection then spans 1000 and its INT8 weights round to
    nothing. The float model with it is the reference."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.stem[1].bias[channel] = -1e4
        out.project[0].weight[:, channel] = 1000.0
    return out


def test_layer_fallback_keeps_the_costliest_layer_in_float_and_onnxruntime_keeps_it_float(trained, tmp_path):
    import onnx
    import onnxruntime as ort

    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.export.ort_fallback import fallback_models
    from edge_cls.export.recipes import OrtQuantization

    model, labels, (val, _), calibration = trained
    fp32 = export_onnx(_damaged(model), SPEC, labels, tmp_path / "fp32.onnx")
    graph = onnx.load(str(fp32)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    damaged = next(n.name for n in graph.node if n.op_type == "Conv" and shapes.get(n.input[1]) == (8, 16, 1, 1))
    all_int8, kept = fallback_models(fp32, tmp_path, calibration, OrtQuantization(), counts=(0, 1))
    assert damaged in kept[1] and len(kept[1]) <= 2  # ranked first: the layer alone, or with its writer or reader

    # ONNX Runtime's own graph optimizations leave it float (its WeightBiasQuantization pass would
    # quantize its weights per tensor): no DequantizeLinear feeds its weight in the optimized graph.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(kept[0]), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producers = {out: n for n in optimized.node for out in n.output}
    node = next(n for n in optimized.node if n.name == damaged)
    assert node.input[1] not in producers, "the kept layer's weight is quantized after all"

    def kl(path):
        from edge_cls.predictions import softmax
        from edge_cls.quality.acceptance import kl_divergence

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        p = softmax(_damaged(model)(torch.from_numpy(val[:200])).detach().numpy(), 1.0)
        return kl_divergence(p, softmax(session.run(None, {"input": val[:200]})[0], 1.0))

    assert kl(kept[0]) < kl(all_int8[0]) / 5  # and keeping it float repairs the damage


def test_the_ranking_keeps_a_unit_in_float_as_the_quantizer_does(trained, tmp_path):
    """The ranking scores a unit by editing one quantized graph; the candidate it ranks is then quantized
    with those layers excluded. Both must compute the same thing, or the ranking ranks something else."""
    import onnx
    import onnxruntime as ort

    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.export.onnxruntime_export import quantize_onnx_int8
    from edge_cls.export.ort_fallback import _with_float_unit, float_units
    from edge_cls.export.recipes import OrtQuantization

    model, labels, (val, _), calibration = trained
    fp32 = export_onnx(model, SPEC, labels, tmp_path / "fp32.onnx")
    ranges = tmp_path / "ranges.json"
    quantized = onnx.load(str(quantize_onnx_int8(fp32, tmp_path / "int8.onnx", calibration, ranges=ranges)))
    units = float_units(quantized, onnx.load(str(fp32)))
    regions = [unit for unit in units if len(unit) > 1]
    assert regions and len(units) > len(regions)  # layers alone, and layers with the layers that read them

    def logits(model_or_path):
        session = ort.InferenceSession(model_or_path, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": val[:200]})[0]

    all_int8 = logits(str(tmp_path / "int8.onnx"))
    for unit in units:  # the stem (and the input only it reads), layers alone, regions, the classifier
        edited = logits(_with_float_unit(quantized, onnx.load(str(fp32)), unit))
        excluded = logits(str(quantize_onnx_int8(fp32, tmp_path / "excluded.onnx", calibration, ranges=ranges,
                                                 settings=OrtQuantization(nodes_to_exclude=unit))))
        assert np.abs(edited - excluded).max() < 1e-5 < np.abs(all_int8 - excluded).max(), unit  # same graph


def test_layer_fallback_ships_through_the_search(trained, tmp_path):
    model = _damaged(trained[0])
    artifacts = export(model, trained, tmp_path, formats=("onnx",), only=("ort-qdq-u8s8", "ort-restore"))
    manifest = artifacts[0].manifest
    rows = {row["recipe"]: row for row in manifest.search["candidates"]}
    assert rows["ort-qdq-u8s8"]["verdict"] == "misses bar", rows
    assert manifest.recipe.startswith("ort-restore") and manifest.parity["drop_high_points"] <= 0.3, rows


def test_bias_correction_moves_only_biases_and_cancels_the_mean_error(trained, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.export.onnxruntime_export import quantize_onnx_int8
    from edge_cls.export.recipes import OrtQuantization

    model, labels, (val, _), calibration = trained
    fp32 = export_onnx(model, SPEC, labels, tmp_path / "fp32.onnx")
    models = {bc: quantize_onnx_int8(fp32, tmp_path / f"bc{bc}.onnx", calibration,
                                     settings=OrtQuantization(bias_correction=bc)) for bc in (False, True)}
    constants = {bc: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
                 for bc, p in models.items()}
    weights = [n for n in constants[False] if n.endswith("weight_quantized")]
    biases = [n for n in constants[False] if n.endswith("bias_quantized")]
    assert weights and all(np.array_equal(constants[False][n], constants[True][n]) for n in weights)
    assert sum(not np.array_equal(constants[False][n], constants[True][n]) for n in biases) >= len(biases) - 1

    def logits(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": val})[0]

    reference = logits(fp32)
    mean_error = {bc: float(np.abs((logits(p) - reference).mean(axis=0)).mean()) for bc, p in models.items()}
    assert mean_error[True] < mean_error[False] / 2, mean_error  # on images it never saw
