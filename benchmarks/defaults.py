"""What a user gets from the quantizers' own defaults, beside what edge-cls ships: ONNX Runtime's
``quantize_static`` and NNCF's ``quantize`` with every option left at its default, on the same model,
calibrated on the same calibration images and judged on the same check images by the same rule (one
fold), each timed round-robin against the FP32 model of its runtime in the same process. OpenVINO
compiles the NNCF model with no hint, as a raw user would: the precision that ran is recorded."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edge_cls.measure.timing import round_robin
from edge_cls.quality.acceptance import AcceptanceRule, judge, measure

ORT_CALIBRATION_IMAGES = 64  # quantize_static's default calibrator holds every intermediate output: bounded


def defaults_for(name: str, work: Path, demo: Path) -> dict:
    model, spec, calibration, check, targets, groups = _case(name, work, demo)
    from edge_cls.export.onnx_export import export_onnx
    from edge_cls.training.models import predict_logits

    reference = predict_logits(model, check)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, spec, [str(i) for i in range(reference.shape[1])], Path(tmp) / "fp32.onnx")
        rows = {"onnxruntime quantize_static defaults": _ort_default(fp32, calibration, check, Path(tmp)),
                "nncf.quantize defaults (OpenVINO)": _nncf_default(fp32, calibration, check)}
    rule = AcceptanceRule()
    out = {}
    for label, (logits, ratio, precision) in rows.items():
        e = measure(reference, logits, targets=targets, groups=groups, rule=rule)
        out[label] = {**e.to_dict(), "x_fp32_p50": ratio, "runtime_precision": precision,
                      "meets_rule": judge(e, rule).meets}
    return out


def _case(name: str, work: Path, demo: Path):
    from edge_cls.calibration_data import CalibrationSet, picture_ids, split_folder

    if name == "demo":
        from edge_cls.data import load_splits, preprocess_split
        from edge_cls.training.checkpoints import Checkpoint

        ck = Checkpoint.load(demo / "checkpoints" / "student.pt")
        calibration = CalibrationSet.from_folder(demo / "data" / "train", ck.spec, size=300).array
        check, targets = preprocess_split(load_splits(demo / "data")["val"], ck.spec)
        return ck.build().eval(), ck.spec, calibration, check, targets, None
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    model = create_model(ModelRecipe(name=f"tf_efficientnet_{name}", num_classes=1000, kwargs={}),
                         weights=work / f"{name}.pth").eval()
    spec = spec_for_model(model)
    labels = (work / "imagenet.txt").read_text().split("\n")[:1000]
    split = split_folder(work / "photos", labels, calibration_size=300, check_size=300, check_fraction=0.5)
    calibration = np.stack([spec(p) for p in split.calibration])
    check = np.stack([spec(p) for p in split.check])
    return model, spec, calibration, check, None, picture_ids(split.check)


def _ort_default(fp32: Path, calibration: np.ndarray, check: np.ndarray, tmp: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[:ORT_CALIBRATION_IMAGES, None])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    quantize_static(str(fp32), str(tmp / "ort-default.onnx"), Reader())
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for k, p in (("fp32", fp32), ("int8", tmp / "ort-default.onnx"))}
    logits = sessions["int8"].run(None, {"input": check})[0]
    return logits, _ratio({k: (lambda s=s: s.run(None, {"input": check[:1]})) for k, s in sessions.items()}), "i8+f32"


def _nncf_default(fp32: Path, calibration: np.ndarray, check: np.ndarray):
    import nncf
    import openvino as ov

    from edge_cls.runtimes.openvino_backend import runtime_precision

    core = ov.Core()
    quantized = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(list(calibration[:, None])))
    compiled = {"fp32": core.compile_model(ov.convert_model(str(fp32)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
                "int8": core.compile_model(quantized, "CPU")}
    logits = np.concatenate([compiled["int8"](check[i:i + 32])[0] for i in range(0, len(check), 32)])
    calls = {k: (lambda c=c: c(check[:1])) for k, c in compiled.items()}
    return logits, _ratio(calls), runtime_precision(compiled["int8"])


def _ratio(calls: dict) -> float:
    timings = round_robin(calls, rounds=9, block=20, max_seconds=60)
    return timings["int8"].p50_ms / timings["fp32"].p50_ms
