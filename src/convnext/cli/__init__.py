"""`convnext` command line: one module per subcommand, each with `register(subparsers)`.

Subcommand modules parse and print; the work happens in library functions. Errors meant for the
user become one line on stderr and an exit status: 2 for bad input, 1 for runtime failures.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings

# Subcommands, in the order `convnext --help` lists them, with their one-line help; each is convnext.cli.<name>.
COMMANDS = {
    "list": "list model names",
    "roadmap": "table of the paper's roadmap steps: params, GMACs (measured and paper), top-1",
    "train": "train a model (paper recipe or a small CPU recipe)",
    "eval": "evaluate a checkpoint: top-1/top-5/loss, per-class accuracy, confusion matrix",
    "predict": "classify images with a trained checkpoint (top-k classes and probabilities)",
    "benchmark": "inference speed of a model (eager and optimize_for_inference) vs timm/torchvision peers",
    "convert": "convert weights between the official, timm, torchvision, hf and our layouts",
    "export": "export a checkpoint to ONNX / TorchScript / torch.export, verified against PyTorch",
    "quantize": "INT8 post-training quantization of a checkpoint (PT2E, x86 CPUs), calibrated on your images",
    "info": "architecture summary per stage (blocks, channels, resolution, params, GMACs) and FLOP breakdown",
    "plot": "plot a run's loss / accuracy / lr curves, or the roadmap chart (paper Fig. 2)",
    "study": "reproduce the paper's roadmap (Fig. 2) as a measured study",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it says something (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


class ReaderMayLeave:
    """stdout/stderr for a command whose reader may go away (``convnext list | head -1``, a training log piped
    into ``head``). Once a write meets a closed pipe, that stream's later output is dropped instead of
    raising: a listing still exits 0 and a training run is never stopped by who reads its output."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.reader_gone = stream is None  # started with the stream closed (`2>&-`): Python gives None

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, OSError, ValueError):  # a closed pipe, a closed fd, a closed file object
                self._drop_output()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._drop_output()

    def isatty(self) -> bool:
        return not self.reader_gone and self._stream.isatty()

    def _drop_output(self) -> None:
        self.reader_gone = True
        if self._stream is None:
            return
        try:  # the interpreter flushes the real stream at exit: let that go to /dev/null, not the closed pipe
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (e.g. a test's capture buffer)
            pass

    def __getattr__(self, name: str):
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


class _Parser(argparse.ArgumentParser):
    """Usage errors as the one line every other error is (``convnext predict: error: ...``, exit 2), with
    a close match for a mistyped command or choice; ``--help`` still shows the full usage."""

    def error(self, message: str):
        hint = ""
        wrong = re.search(r"invalid choice: '([^']*)'", message)
        for action in self._actions if wrong else ():
            name = "/".join(action.option_strings) or action.metavar or action.dest  # as argparse names it
            if action.choices and message.startswith(f"argument {name}:"):
                close = difflib.get_close_matches(wrong[1], [str(c) for c in action.choices], n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given) one with only that subcommand's arguments, which is all
    ``main`` needs and keeps ``convnext --help`` and ``convnext list`` from loading every command."""
    parser = _Parser(
        prog="convnext",
        description="ConvNeXt: models, the paper's modernization roadmap, training and deployment.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, text in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"{__name__}.{name}").register(sub, _Formatter)
        else:  # listed with its help only: importing a command's module imports torch (seconds)
            sub.add_parser(name, help=text)
    for command_parser in sub.choices.values():  # also after the command, where a user adds it to a failed line
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show full tracebacks on errors")
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the user as one ``warning: ...`` line, not Python's two lines with a source quote."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    streams, showwarning = (sys.stdout, sys.stderr), warnings.showwarning
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    warnings.showwarning = _warning_line
    try:
        return _run(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # here, where a reader that left is handled, not at interpreter exit
        sys.stdout, sys.stderr = streams
        warnings.showwarning = showwarning


def _run(argv: list[str] | None) -> int:
    # (no list() here: importing the `list` subcommand binds that name in this package's namespace)
    words = sys.argv[1:] if argv is None else [*argv]
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)  # --help exits 0, a usage error 2 (one line, from _Parser.error)
    try:
        result = args.func(args)
        return int(result or 0)
    except KeyboardInterrupt:
        print("convnext: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if args.debug or os.environ.get("CONVNEXT_DEBUG"):
            raise
        print(f"convnext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI boundary turns every failure into one line
        if args.debug or os.environ.get("CONVNEXT_DEBUG"):
            raise
        print(f"convnext {args.command}: failed: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
        return 1
