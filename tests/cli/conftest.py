"""Helpers for CLI tests, as fixtures (tests are imported by path, so they cannot import each other)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "edge_cls.cli"]


def _run(*args, timeout=600, env=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def _one_line_error(result, match):
    """Exit 1, no traceback, and the last line of stderr is the one error line naming ``match``."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("edge-cls: error:") and match in last, last


@pytest.fixture(scope="session")
def cli():
    """``cli(*args)``: run ``edge-cls`` as a subprocess and return the CompletedProcess."""
    return _run


@pytest.fixture(scope="session")
def one_line_error():
    return _one_line_error
