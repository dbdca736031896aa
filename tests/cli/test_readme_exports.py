"""Every ``edge-cls export`` command in the README runs as written, against a small build laid out as
``make demo`` lays out its own, and does what the README says it does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.slow


def export_commands() -> list[str]:
    """The README's ``edge-cls export`` commands, continuation lines joined, comments and shell operators cut."""
    text = README.read_text().replace("\\\n", " ")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("edge-cls export "):
                commands.append(re.split(r"\s[|>]\s", line)[0])
    return commands


@pytest.fixture(scope="module")
def small_build(tiny_checkpoint, digits_root, tmp_path_factory):
    """A directory holding ``build/demo/checkpoints/student.pt`` and ``build/demo/data/{train,val,test}``."""
    root = tmp_path_factory.mktemp("readme")
    (root / "build" / "demo" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, root / "build" / "demo" / "checkpoints" / "student.pt")
    shutil.copytree(digits_root, root / "build" / "demo" / "data")
    # what `make demo` writes beside them, and one README command reads: an artifact and the suggested taxonomy
    export = ["export", "--checkpoint", "build/demo/checkpoints/student.pt", "--formats", "onnx", "--precisions",
              "fp32", "--calib-data", "build/demo/data/train", "--output", "build/demo/artifacts"]
    suggest = ["suggest-taxonomy", "build/demo", "--groups", "5", "--output", "build/demo/suggested_taxonomy.yaml"]
    for command in (export, suggest):
        done = subprocess.run([sys.executable, "-m", "edge_cls.cli", *command], cwd=root, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return root


def test_the_readme_shows_export_commands_that_only_need_a_demo_build():
    commands = export_commands()
    assert len(commands) >= 3
    for command in commands:
        paths = [arg for arg in command.split() if "/" in arg]
        assert all(p.startswith("build/") for p in paths), command


@pytest.mark.parametrize("command", export_commands())
def test_readme_export_command_runs_as_written(small_build, command):
    args = command.split()[1:]
    result = subprocess.run([sys.executable, "-m", "edge_cls.cli", *args], cwd=small_build, capture_output=True,
                            text=True, timeout=900)
    output = Path(small_build) / args[args.index("--output") + 1]
    if "--defer-choice" in args:  # a bundle, then the device's step
        assert result.returncode == 0, result.stderr[-2000:]
        assert (output / "bundle.json").is_file() and "edge-cls choose" in result.stdout
        chosen = subprocess.run([sys.executable, "-m", "edge_cls.cli", "choose", str(output), "--output",
                                 str(output.with_name("chosen"))], capture_output=True, text=True, timeout=600)
        assert chosen.returncode == 0, chosen.stderr[-2000:]
    elif "--precisions" in args and args[args.index("--precisions") + 1] == "int8":
        # ships INT8 within the bar, or refuses in one line with the figures and what to try
        if result.returncode == 0:
            manifest = json.loads(next(output.glob("*/manifest.json")).read_text())
            assert manifest["precision"] == "int8" and manifest["parity"]["drop_high_points"] <= 0.5
        else:
            assert result.returncode == 1 and result.stderr.count("\n") == 1
            assert "no int8 recipe meets the rule" in result.stderr and "--accept-drop" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        for manifest in output.glob("*/manifest.json"):
            search = json.loads(manifest.read_text())["search"]
            assert search["requested"] == "auto" and search["check"]["pictures"]
