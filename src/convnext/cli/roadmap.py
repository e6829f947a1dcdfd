"""`convnext roadmap`: the paper's modernization steps with measured params and GMACs."""

from __future__ import annotations

import json

from ..models.summary import format_table, roadmap_rows
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "roadmap",
        help=COMMANDS["roadmap"],
        formatter_class=formatter,
        description="Measure every roadmap network (ResNet-50 -> ConvNeXt-T) against the paper's Fig. 2.",
    )
    p.add_argument("--size", type=int, default=224, help="input resolution for the GMAC count")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier size for the parameter count")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--markdown", action="store_true", help="markdown table (for docs)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.size < 32:
        raise ValueError(f"--size {args.size} is smaller than the networks' total stride 32; use --size 32 or more")
    rows = roadmap_rows((3, args.size, args.size), args.num_classes)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, markdown=args.markdown))
    return 0
