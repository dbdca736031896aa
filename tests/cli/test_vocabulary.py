"""One CLI vocabulary: every flag of every subcommand comes from edge_cls.cli.options, means the
same thing everywhere, follows timm's train.py where it has a name, and the commands the README
shows (today's and the spellings earlier READMEs documented) still parse."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from edge_cls.cli import build_parser, main, parse_args, subcommands
from edge_cls.cli.options import VOCABULARY

README = Path(__file__).resolve().parents[2] / "README.md"
# timm train.py's names for the options we share with it.
TIMM_NAMES = ["--model", "--pretrained", "--img-size", "--epochs", "--lr", "--batch-size", "--seed", "--opt",
              "--weight-decay", "--warmup-epochs", "--hflip", "--scale", "--mixup", "--cutmix", "--smoothing",
              "--model-ema-decay", "--clip-grad", "--workers", "--data-dir", "--output", "--resume",
              "--kd-model-name", "--kd-distill-type", "--kd-temperature", "--distill-loss-weight",
              "--task-loss-weight", "--num-classes", "--config"]
# Commands from the README as it was before the vocabulary was unified: they must keep working.
OLD_README_COMMANDS = [
    "build --out build/demo",
    "distill --config configs/vit_b_to_mobilenetv3_large.yaml --data /data/flowers --out build/flowers-mnv3l",
    "build --config configs/vit_b_to_mobilenetv3_large.yaml --data /data/flowers --out build/flowers-mnv3l --resume",
    "finetune-teacher --model vit_base_patch16_224 --weights vit_b16_in21k.safetensors --data /data/flowers "
    "--input-size 224 --epochs 10 --lr 5e-5 --batch-size 64 --out teacher_flowers.pt",
    "distill --config configs/vit_b_to_efficientnet_b0.yaml --teacher-weights teacher_flowers.pt --data /data/flowers "
    "--out build/flowers-effb0",
    "export --model efficientnet_b0 --weights my_weights.pth --labels labels.txt --calib /data/calibration_images "
    "--formats onnx openvino --precisions fp32 int8 --out build/efficientnet_b0",
    "export --checkpoint build/demo/checkpoints/student.pt --calib build/demo/data/val --formats openvino "
    "--precisions int8 --out build/again",
    "predict build/demo/artifacts/openvino-int8 digit.png other.jpg -k 3 --json",
    "bench build/demo/artifacts/onnx-fp32 --data build/demo/data/test --iterations 5 --batch 4",
    "info build/demo/artifacts/onnx-fp32",
    "train --model test_vit --data d --input-size 32 --epochs 1 --out t.pt",
    "build --teacher test_vit --student test_efficientnet --student-epochs 1 --distill hard --temperature 2 "
    "--distill-weight 0.5 --task-weight 0.5 --ema-decay 0.9 --label-smoothing 0 --teacher-input-size 32",
]


def _option_signatures() -> dict[str, dict[str, tuple]]:
    """option string -> {command: (dest, nargs, type, choices, const, action)}"""
    seen: dict[str, dict[str, tuple]] = {}
    for command, parser in subcommands(build_parser()).items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                signature = (action.dest, action.nargs, getattr(action.type, "__name__", action.type),
                             tuple(action.choices or ()), action.const, type(action).__name__)
                seen.setdefault(option, {})[command] = signature
    return seen


def test_every_flag_means_one_thing_everywhere():
    for option, by_command in _option_signatures().items():
        if option.startswith("--no-"):
            continue
        signatures = set(by_command.values())
        assert len(signatures) == 1, f"{option} differs between commands: {by_command}"


def test_every_flag_comes_from_the_vocabulary():
    known = {}
    for name, flag in VOCABULARY.items():
        for option in (*flag.names, *flag.aliases):
            known[option] = name
    for option, by_command in _option_signatures().items():
        base = "--" + option[5:] if option.startswith("--no-") else option
        assert base in known, f"{option} (in {sorted(by_command)}) is not in edge_cls.cli.options.VOCABULARY"
        for dest, *_ in by_command.values():
            assert dest == known[base], f"{option} stores into {dest}, the vocabulary says {known[base]}"


def test_names_follow_timm_where_timm_has_one():
    shown = {option for flag in VOCABULARY.values() for option in flag.names}
    assert set(TIMM_NAMES) <= shown


def test_every_training_command_reads_the_config_file():
    commands = subcommands(build_parser())
    for name in ("build", "distill", "finetune-teacher"):
        assert any(a.dest == "config" for a in commands[name]._actions), name


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("edge-cls "):
                commands.append(line[len("edge-cls "):])
            elif line.startswith("torchrun ") and "-m edge_cls " in line:
                commands.append(line.split("-m edge_cls ", 1)[1])
    return commands


SHELL_OPERATORS = {"|", ">", ">>", ">&", "&>", "<", "&&", "||", ";", "&"}


def edge_cls_argv(command: str) -> list[str]:
    """The arguments edge-cls sees: up to the first shell pipe, redirection or command separator."""
    lexer = shlex.shlex(command.replace("[--json]", "--json"), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv = []
    for token in lexer:
        if token in SHELL_OPERATORS:
            break
        argv.append(token)
    return argv


def test_shell_operators_end_the_command():
    assert edge_cls_argv("predict a b --jsonl > out.jsonl") == ["predict", "a", "b", "--jsonl"]
    assert edge_cls_argv("predict a --jsonl | jq -r '.path'") == ["predict", "a", "--jsonl"]
    assert edge_cls_argv("check a --images 'x|y'") == ["check", "a", "--images", "x|y"]


@pytest.mark.parametrize("command", readme_commands() + OLD_README_COMMANDS)
def test_readme_commands_parse(command):
    args = parse_args(edge_cls_argv(command))
    assert callable(args.func)


def test_old_spellings_land_in_the_same_place():
    parse = parse_args
    old = parse(shlex.split(OLD_README_COMMANDS[-1]))
    new = parse(
        shlex.split(
            "build --kd-model-name test_vit --model test_efficientnet --epochs 1 --kd-distill-type hard "
            "--kd-temperature 2 --distill-loss-weight 0.5 --task-loss-weight 0.5 --model-ema-decay 0.9 "
            "--smoothing 0 --teacher-img-size 32"
        )
    )
    assert vars(old) == vars(new)
    assert parse(["export", "--model", "m", "--input-size", "3", "224", "224", "--out", "o"]).img_size == 224


@pytest.mark.parametrize("argv, message", [
    (["bench", "a", "--batch-size", "0"], "must be at least 1"),
    (["bench", "a", "--bench-iterations", "-3"], "must be at least 1"),
    (["build", "--img-size", "4"], "at least 8"),
    (["build", "--lr", "-1"], "must be positive"),
    (["build", "--hflip", "2"], "must be in [0.0, 1.0]"),
    (["export", "--calibration-size", "-5"], "must be at least 1"),
    (["predict", "a", "b", "-k", "0"], "must be at least 1"),
    (["build", "--input-size", "3", "224", "200"], "only square"),
])
def test_numeric_flags_are_checked_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-cls: error:") and message in err[0], err
