"""`convnext eval`: top-1 / top-5 / loss of a checkpoint on a dataset, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json

import torch

from ..data import DATASETS
from ..infer.tta import TTA_MODES
from ..train.evaluate import evaluate_checkpoint
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "eval", help=COMMANDS["eval"],
        formatter_class=formatter,
        description="Evaluate any checkpoint convnext can load (ours, or official/timm/torchvision/HF weights "
                    "with --model) on an image folder, Fashion-MNIST, CIFAR-10/100 or synthetic data, with the "
                    "checkpoint's own preprocessing (resize to size/crop_ratio, center crop, normalize).",
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run directory, or foreign weights")
    add_model_options(p)
    p.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                   help="default: the dataset the checkpoint was trained on where its name is enough "
                        "(fashion_mnist, cifar10, cifar100), else folder")
    p.add_argument("--data-root", default=None,
                   help="folder: ROOT with <split>/CLASS/* (or ROOT/CLASS/*); fashion_mnist: IDX directory; "
                        "cifar10/cifar100: the extracted archive")
    p.add_argument("--split", default=None, choices=("train", "val"),
                   help="default: val, or train with --holdout")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="score the N training images a run with --data.holdout N validated on (the same fixed cut), "
                        "to choose e.g. --tta without the test split")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation: flip averages each image's and its mirror image's probabilities")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0,
                   help="evaluate only N samples, the first N of a fixed shuffle (the same every time; 0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--fast", action="store_true", help="run the inference-optimised copy (optimize_for_inference)")
    p.add_argument("--precision", default="", metavar="LIST",
                   help="comma-separated precisions of the inference model to score, e.g. fp32,bf16,int8: each one's "
                        "accuracy and its top-1 agreement with the first (auto, fp32, bf16, fp16 on CUDA, int8)")
    p.add_argument("--calibration", default=None, metavar="DATA",
                   help="for int8: calibration images (folder or dataset name; its training split), never the "
                        "evaluated ones")
    p.add_argument("--calibration-images", type=int, default=512, help="for int8: how many calibration images")
    p.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix figure here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    with torch.inference_mode(False):
        r = evaluate_checkpoint(args.checkpoint, model_name=args.model, arch=arch_overrides(args),
                                dataset=args.dataset, data_root=args.data_root,
                                split=args.split or ("train" if args.holdout else "val"), holdout=args.holdout,
                                tta=args.tta,
                                batch_size=args.batch_size, workers=args.workers, limit=args.limit,
                                device=args.device, amp=args.amp, fast=args.fast, confusion_png=args.confusion,
                                precisions=[p.strip() for p in args.precision.split(",") if p.strip()],
                                calibration=args.calibration, calibration_images=args.calibration_images)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    skipped = f" ({r['bad_images']} unreadable file(s) skipped)" if r["bad_images"] else ""
    precision = f" ({r['precision']})" if r.get("precision") else ""
    if r["holdout"]:
        precision += f" (held out of {r['split']}, as data.holdout {r['holdout']} cuts it)"
    if r["tta"] != "none":
        precision += f" (tta {r['tta']})"
    print(f"{r['count']} images{skipped}{precision}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    if len(r.get("precisions", [])) > 1:
        first = r["precisions"][0]["precision"]
        print(f"{'precision':<9}  {'top-1':>6}  {'vs ' + first:>8}  {'agree':>7}")
        for row in r["precisions"]:
            print(f"{row['precision']:<9}  {row['top1']:6.2f}  {row['top1'] - r['top1']:+8.2f}  {row['top1_agreement']:6.2f}%")
    width = max(len("class"), *(len(c["class"]) for c in r["per_class"]))
    print(f"{'class':<{width}}  {'count':>6}  {'top-1':>7}")
    for c in r["per_class"]:
        acc = f"{c['top1']:.2f}" if c["top1"] is not None else "-"
        print(f"{c['class']:<{width}}  {c['count']:>6}  {acc:>7}")
    if "confusion_png" in r:
        print(f"confusion matrix: {r['confusion_png']}")
    return 0
