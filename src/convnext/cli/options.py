"""Options several subcommands share."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..errors import UsageError

MODEL_HELP = "architecture for checkpoints without convnext metadata (official/timm/torchvision/HF files)"


def add_model_options(p: argparse.ArgumentParser, help: str = MODEL_HELP) -> None:
    """``--model NAME`` and ``--arch KEY=VALUE``: the architecture of weights that do not carry it."""
    p.add_argument("--model", default=None, metavar="NAME", help=help)
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="ArchConfig field overriding --model's, repeatable, e.g. --arch depths=[2,2,2,2] "
                        "--arch dims=[32,64,128,256] (as model.overrides in training)")


def arch_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--arch`` as a dict of ArchConfig overrides (values parsed as YAML: numbers, lists, true/false)."""
    out: dict[str, Any] = {}
    for item in args.arch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--arch {item!r} must be KEY=VALUE, e.g. --arch kernel_size=5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UsageError(f"--arch {item!r}: {value!r} is not a value; write numbers, lists like [2,2,6,2], "
                             "true/false or names") from None
    return out
