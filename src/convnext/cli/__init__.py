"""`convnext` command line: one module per subcommand, each with `register(subparsers)`.

Subcommand modules parse and print; the work happens in library functions. Errors meant for the
user become one line on stderr and an exit status: 2 for bad input, 1 for runtime failures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommands, in the order `convnext --help` lists them; each is convnext.cli.<name>.
COMMANDS = ("list", "roadmap", "train", "eval", "predict", "benchmark", "convert", "export", "info", "plot", "study")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext",
        description="ConvNeXt: models, the paper's modernization roadmap, training and deployment.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
