"""`convnext predict CHECKPOINT IMAGES...`: top-k classes per image, as a table or JSON."""

from __future__ import annotations

import json
import sys

from ..infer.predict import Prediction, Predictor, check_inputs, results_json
from ..infer.tta import TTA_MODES
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "predict",
        help=COMMANDS["predict"],
        formatter_class=formatter,
        description="Classify image files, directories or glob patterns. The checkpoint carries its class names "
                    "and preprocessing (size, crop, mean/std), so no other flags are needed.\n"
                    "Exit status: 0 all files answered, 2 some file could not be read (the others are still "
                    "answered), 1 runtime failure.",
        epilog="example: convnext predict runs/fmnist/model.safetensors photos/ 'shots/*.jpg' --topk 3 --json",
    )
    p.add_argument("checkpoint", help="checkpoint .safetensors file or run directory (model, best or last .safetensors)")
    p.add_argument("images", nargs="+", help="image files, directories (searched recursively) or glob patterns")
    p.add_argument("-k", "--topk", type=int, default=5, help="classes to report per image (capped at the class count)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("-j", "--workers", type=int, default=2, help="threads decoding images (0: decode in the main thread)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--fast", action="store_true", help="run the fused inference model (convnext.infer.fuse)")
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                   help="run the fused inference model in this precision (auto: bf16 on CPUs with native bf16 "
                        "and on CUDA, else fp32); INT8 files from convnext quantize run as they are")
    add_model_options(p)
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation: flip averages each image's and its mirror image's probabilities "
                        "(for classes a horizontal flip keeps)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=run)


def format_table(results: list[Prediction]) -> str:
    ok = [r for r in results if r.ok]
    if not ok:
        return ""
    k = max(len(r.classes) for r in ok)
    header = ["file"] + [f"top-{i + 1}" for i in range(k)]
    body = [[r.file] + [f"{c} {p * 100:.1f}%" for c, p in zip(r.classes, r.probs)] for r in ok]
    widths = [max(len(row[i]) for row in [header, *body] if i < len(row)) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])


def run(args) -> int:
    check_inputs(args.images)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, fast=args.fast, model_name=args.model,
                                          precision=args.precision, tta=args.tta,
                                          arch=arch_overrides(args), batch_size=args.batch_size, workers=args.workers)
    results = predictor.predict_inputs(args.images, args.topk)
    for r in results:
        if not r.ok:
            print(f"convnext predict: error: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps(results_json(results, args.checkpoint, predictor.info, min(args.topk, len(predictor.class_names))),
                         indent=2))
    else:
        table = format_table(results)
        if table:
            print(table)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"convnext predict: {failed} of {len(results)} input(s) could not be classified", file=sys.stderr)
        return 2
    return 0
