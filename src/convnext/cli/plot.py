"""`convnext plot RUN_DIR` (training curves) and `convnext plot --roadmap [RESULTS]` (paper Fig. 2 chart)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..models.summary import roadmap_rows
from ..plots import plot_roadmap, plot_run
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "plot",
        help=COMMANDS["plot"],
        formatter_class=formatter,
        description="RUN_DIR: read RUN_DIR/metrics.jsonl and write loss.png, accuracy.png and lr.png (into RUN_DIR "
                    "unless --out). --roadmap: top-1 and GMACs per roadmap step in the style of the paper's "
                    "Figure 2; with a study's results.json, our measured top-1 is drawn next to the paper's.",
        epilog="examples: convnext plot runs/fmnist;  convnext plot --roadmap results/roadmap/results.json "
               "--out docs/images/roadmap.png",
    )
    p.add_argument("source", nargs="?", default=None, metavar="RUN_DIR|RESULTS",
                   help="run directory (or its metrics.jsonl); with --roadmap, an optional study results.json")
    p.add_argument("--roadmap", action="store_true", help="draw the roadmap chart instead of training curves")
    p.add_argument("--size", type=int, default=224, help="--roadmap: input resolution for our GMAC count")
    p.add_argument("-o", "--out", default=None,
                   help="output folder for run curves (default: the run directory); output file for --roadmap "
                        "(default: roadmap.png next to RESULTS, else in the current folder)")
    p.set_defaults(func=run)


def _read_study(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); pass the study's results.json") from None


def run(args) -> int:
    if args.roadmap:
        if args.size < 32:
            raise UsageError(f"--size {args.size} is smaller than the networks' total stride 32; use 32 or more")
        study = None
        if args.source is not None:
            source = Path(args.source)
            if source.is_dir():
                source = source / "results.json"
            if not source.is_file():
                raise FileNotFoundError(f"{source}: no such study results file; run the roadmap study first")
            study = _read_study(source)
        default = (Path(args.source).parent if args.source and Path(args.source).is_file() else
                   Path(args.source) if args.source else Path(".")) / "roadmap.png"
        path = plot_roadmap(roadmap_rows((3, args.size, args.size)), study, path=args.out or default)
        print(f"wrote {path}")
        return 0
    if args.source is None:
        raise UsageError("pass a run directory (convnext plot RUN_DIR) or --roadmap")
    for path in plot_run(args.source, args.out):
        print(f"wrote {path}")
    return 0
