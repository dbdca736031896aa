"""The tree's dependency boundary: the core, the runtimes, calibration data and the CLI import
neither torch nor timm, so an edge app installs numpy, pillow and one runtime."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import edge_cls

HEAVY = ("torch", "timm", "torchvision", "nncf", "onnx", "onnxruntime", "openvino", "tensorrt", "matplotlib", "yaml")


def torch_free_modules() -> list[str]:
    """Every top-level module of edge_cls, and the packages that must stay torch-free."""
    modules = [
        f"edge_cls.{m.name}" for m in pkgutil.iter_modules(edge_cls.__path__) if not m.ispkg and m.name != "__main__"
    ]
    packages = ["edge_cls.runtimes", "edge_cls.runtimes.base", "edge_cls.calibration_data", "edge_cls.cli",
                "edge_cls.cli.options", "edge_cls.export", "edge_cls.export.formats"]
    return sorted(modules + packages)


def test_the_torch_free_part_imports_no_heavy_library():
    modules = torch_free_modules()
    assert {"edge_cls.preprocess", "edge_cls.manifest", "edge_cls.data", "edge_cls.config", "edge_cls.evaluate",
            "edge_cls.benchmark", "edge_cls.report", "edge_cls.progress"} <= set(modules)
    script = textwrap.dedent(f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_each_runtime_backend_imports_only_its_own_library():
    for module in ("onnxruntime_backend", "openvino_backend"):
        script = textwrap.dedent(f"""
            import sys
            import edge_cls.runtimes.{module}
            print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]", f"{module} imported {result.stdout.strip()} at import time"


def test_the_training_stack_lives_in_its_own_package():
    root = Path(edge_cls.__file__).parent
    top_level = {p.stem for p in root.glob("*.py")}
    assert not top_level & {"models", "tasks", "train", "loop", "distill", "pipeline", "distributed", "checkpoints"}
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text and "import timm" not in text, path
