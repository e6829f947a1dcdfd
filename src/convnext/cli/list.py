"""`convnext list`: registered model names."""

from __future__ import annotations

import difflib

from ..models import get_entry, list_models
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser("list", help=COMMANDS["list"], formatter_class=formatter,
                       description="List registered models (family, isotropic and roadmap steps).")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext_*'")
    p.set_defaults(func=run)


def run(args) -> int:
    names = list_models(args.pattern)
    if not names:
        close = difflib.get_close_matches(args.pattern, list_models(), n=3) if not set("*?[") & set(args.pattern) else []
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `convnext list` to see all names"
        raise ValueError(f"no model matches {args.pattern!r}{hint}")
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {get_entry(name).description}")
    return 0
