"""The ``edge-cls`` command line: build, distill, finetune-teacher, export, predict, bench, info, index, ...

One module per group of commands (:mod:`.training`, :mod:`.export`, :mod:`.artifacts`, :mod:`.organize`), one
vocabulary of flags (:mod:`.options`). Heavy libraries are imported inside each command, so
``edge-cls --help`` is instant and ``predict``/``bench``/``info`` run with only a runtime
installed. Errors print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from edge_cls.errors import EdgeClsError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Command names earlier versions documented: still accepted, not listed.
COMMAND_ALIASES = {"train": "finetune-teacher"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a command line (old command names included); a usage error exits with one line."""
    argv = [COMMAND_ALIASES.get(arg, arg) if i == _command_index(argv) else arg for i, arg in enumerate(argv)]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    _setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except EdgeClsError as e:
        if args.debug:
            raise
        print(f"edge-cls: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edge-cls: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        if args.debug:
            raise
        print("edge-cls: error: out of memory; use smaller batches or inputs", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug, not bad input: still one line, the traceback behind --debug
        if args.debug:
            raise
        print(f"edge-cls: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _command_index(argv: list[str]) -> int:
    """Where the command name is: the first argument that is not a global option."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return i
    return -1


class _KnownNoise(logging.Filter):
    """Library messages that are harmless and would only alarm: ORT's per-channel quantizer logs
    one "Axis 1 is out-of-range for weight ..." per LayerNorm of a ViT (the weights stay fine)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and "is out-of-range for weight" in record.getMessage())


def _setup_logging(verbose: bool) -> None:
    # Pillow warns about images over 89 MP before edge-cls refuses them (from the header, with one
    # error line): the warning would only add two lines of noise to that error.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_KnownNoise())
    logging.getLogger("edge_cls").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("nncf", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # NNCF imports torch's C++-extension helper, which warns about CUDA on every CPU-only machine
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # torchao (imported by NNCF's strip) registers an Enum that torch's pytree warns is deprecated
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


class _Parser(argparse.ArgumentParser):
    """argparse with exact option names only (no prefix guessing) and one-line usage errors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"edge-cls: error: {self.prog.removeprefix('edge-cls ')}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-cls", description="Distil, export, check and benchmark image classifiers for edge devices."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    from . import artifacts, export, organize, training

    training.add_parsers(sub)
    export.add_parser(sub)
    artifacts.add_parsers(sub)
    organize.add_parsers(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name (for the vocabulary test and the docs)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


__all__ = ["build_parser", "main", "parse_args", "subcommands"]
