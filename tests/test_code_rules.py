"""Rules of the tree that a reviewer would otherwise have to remember, checked on the source.

- Backend knowledge lives in the backends: outside ``runtimes/`` and the tables that name the
  backends and formats, no code compares anything with a backend or format name (``==``, ``!=``,
  ``in``, ``match``). A caller that needs to ask is missing a method or a field on the backend.
- Functions stay short: none over 60 lines outside the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge_cls.backends import BACKEND_NAMES
from edge_cls.export.formats import FORMATS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("edge_cls", "export", "runtimes", "calibration_data", "benchmarks")
TABLES = {"edge_cls/backends.py", "export/formats.py", "export/recipes.py"}
NAMES = set(BACKEND_NAMES) | set(FORMATS)
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def _names_in(node: ast.AST) -> set[str]:
    """Backend or format names written as string constants in ``node`` (a literal or a tuple/list/set of them)."""
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {v.value for v in values if isinstance(v, ast.Constant) and v.value in NAMES}


def backend_comparisons(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            for side in [node.left, *node.comparators]:
                found += [(node.lineno, name) for name in _names_in(side)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, name) for name in _names_in(node.value)]
    return found


def test_no_backend_or_format_name_is_compared_outside_the_backends_and_the_tables():
    offenders = []
    for path in python_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("runtimes/") or relative in TABLES:
            continue
        offenders += [f"{relative}:{line} compares with {name!r}"
                      for line, name in backend_comparisons(ast.parse(path.read_text()))]
    assert not offenders, "\n".join(offenders)


def test_the_backend_rule_catches_each_form_of_comparison():
    source = ('a == "openvino"\nb != "onnxruntime"\nc in ("onnx", "x")\nmatch d:\n    case "tensorrt": pass\n'
              'e == "something else"\n')
    assert sorted(name for _, name in backend_comparisons(ast.parse(source))) == [
        "onnx", "onnxruntime", "openvino", "tensorrt"]


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("folder", SOURCES)
def test_no_function_is_longer_than_60_lines(folder):
    offenders = [f"{path.relative_to(ROOT)}: {name} has {lines} lines" for path in (ROOT / folder).rglob("*.py")
                 for name, lines in long_functions(ast.parse(path.read_text()))]
    assert not offenders, "\n".join(offenders)
