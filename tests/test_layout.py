"""The tree is the architecture: what an edge app loads, what may import what, and the README's
Layout block, checked against each other.

An edge app installs numpy, pillow and one runtime. Loading an artifact and classifying an image
(``edge_cls.runtimes``) or serving one (``edge_cls.serve``) must load only the device core listed
here: never the measuring tools, the quality tools, the training stack, the export side, torch or
timm.
"""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edge_cls

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(edge_cls.__file__).parent
HEAVY = ("torch", "timm", "torchvision", "nncf", "onnx", "onnxruntime", "openvino", "tensorrt", "matplotlib", "yaml")

# What an app that loads, classifies and serves imports of edge-cls (plus its one backend module).
DEVICE_CORE = {
    "edge_cls", "edge_cls.errors", "edge_cls._fileio", "edge_cls.backends", "edge_cls.predictions",
    "edge_cls.taxonomy", "edge_cls.preprocess", "edge_cls.preprocess._decode", "edge_cls.preprocess._resize",
    "edge_cls.preprocess._jpeg", "edge_cls.preprocess.placement",
    "edge_cls.artifact", "edge_cls.artifact.manifest", "edge_cls.artifact.schema", "edge_cls.artifact.integrity",
    "edge_cls.artifact.signatures", "edge_cls.artifact.embeddings",
    "edge_cls.serve", "edge_cls.serve.server", "edge_cls.serve.service", "edge_cls.serve.inference_protocol",
    "edge_cls.runtimes", "edge_cls.runtimes.base", "edge_cls.runtimes.streaming",
    "edge_cls.runtimes.pool",
}
NEVER_ON_DEVICE = ("edge_cls.measure", "edge_cls.quality", "edge_cls.training", "edge_cls.export", "edge_cls.cli",
                   "edge_cls.calibration_data")
MAX_TOP_LEVEL = 14


def _run(script: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_classifying_and_serving_load_only_the_device_core(artifacts, test_images, name):
    backend_module = "edge_cls.runtimes." + ("onnxruntime_backend" if name.startswith("onnx") else "openvino_backend")
    other = "openvino" if name.startswith("onnx") else "onnxruntime"
    loaded = _run(f"""
        import sys
        from edge_cls.runtimes import load
        import edge_cls.serve
        with load({str(artifacts[name])!r}) as clf:
            clf.predict({str(test_images[0])!r}, k=1)
        print(sorted(m for m in sys.modules if m.startswith("edge_cls") or m.split(".")[0] in {HEAVY!r}))
    """)
    modules = set(ast.literal_eval(loaded))
    ours = {m for m in modules if m.startswith("edge_cls")}
    assert ours <= DEVICE_CORE | {backend_module}, sorted(ours - DEVICE_CORE - {backend_module})
    assert not [m for m in ours if m.startswith(NEVER_ON_DEVICE)]
    heavy = {m.split(".")[0] for m in modules if not m.startswith("edge_cls")}
    assert other not in heavy and not heavy & {"torch", "timm", "nncf", "onnx", "matplotlib"}, heavy


def test_the_torch_free_parts_import_no_heavy_library():
    """The core, measure/, quality/, the runtimes' base, calibration data, the CLI and the export table."""
    modules = [f"edge_cls.{m.name}" for m in pkgutil.iter_modules(edge_cls.__path__)
               if m.name not in ("__main__", "training", "export")]
    for sub in ("measure", "quality", "artifact", "preprocess", "cli", "serve"):
        modules += [f"edge_cls.{sub}.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE / sub)])
                    if m.name != "__main__"]
    modules += ["edge_cls.runtimes.base", "edge_cls.calibration_data", "edge_cls.export.formats",
                "edge_cls.training.config"]
    assert {"edge_cls.measure.latency", "edge_cls.quality.evaluate", "edge_cls.data"} <= set(modules)
    found = _run(f"""
        import importlib, sys
        for name in {sorted(set(modules))!r}:
            importlib.import_module(name)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert found == "[]", found


def test_each_runtime_backend_imports_only_its_own_library():
    for module in ("onnxruntime_backend", "openvino_backend", "tensorrt_backend"):
        found = _run(f"""
            import sys
            import edge_cls.runtimes.{module}
            print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """)
        assert found == "[]", f"{module} imported {found} at import time"


def top_level() -> set[str]:
    """The top level of edge_cls: its modules and sub-packages (the tree a reader sees)."""
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def test_the_top_level_is_small_and_the_training_stack_lives_in_its_own_package():
    modules = {name for name in top_level() if (PACKAGE / f"{name}.py").is_file()}
    assert len(modules | (top_level() & {"preprocess", "artifact"})) <= MAX_TOP_LEVEL, sorted(top_level())
    assert not top_level() & {"models", "tasks", "train", "loop", "distill", "pipeline", "distributed", "config"}
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text and "import timm" not in text, path


def test_the_readme_layout_block_names_every_part_of_the_tree():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"\b([a-z_]+)(?=[,;: (/]|$)", block, flags=re.M))
    parts = {p for p in top_level() if p != "__main__"}
    assert parts <= named, f"not in the README's Layout block: {sorted(parts - named)}"
    for sub in ("measure", "quality", "training", "cli"):
        assert f"edge_cls/{sub}/" in block
        inside = {p.stem for p in (PACKAGE / sub).glob("*.py") if p.stem not in ("__init__", "__main__")}
        assert inside <= named, f"edge_cls/{sub}: not in the README's Layout block: {sorted(inside - named)}"
