"""`convnext info NAME|CHECKPOINT`: per-stage architecture summary and where the FLOPs go."""

from __future__ import annotations

import json

from ..info import describe, format_report
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "info",
        help=COMMANDS["info"],
        formatter_class=formatter,
        description="Summarise a registered model (see `convnext list`, roadmap steps included) or a checkpoint: "
                    "per-stage blocks, channels, output resolution, params and GMACs, and where the FLOPs go "
                    "(stem / depthwise / pointwise / downsample / head). GMACs are what the paper calls FLOPs.",
        epilog="examples: convnext info convnext_tiny;  convnext info roadmap_patchify --size 160;  "
               "convnext info runs/fmnist/model.safetensors --json",
    )
    p.add_argument("source", metavar="NAME|CHECKPOINT", help="registered model name or checkpoint path")
    p.add_argument("--size", type=int, default=None,
                   help="input resolution (default: the checkpoint's input size, else 224)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    report = describe(args.source, size=args.size, model_name=args.model, arch=arch_overrides(args))
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
