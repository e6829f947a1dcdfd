"""`convnext eval`: top-1 / top-5 / loss of a checkpoint on a dataset, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UsageError


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: top-1/top-5/loss, per-class accuracy, confusion matrix",
        formatter_class=formatter,
        description="Evaluate any checkpoint convnext can load (ours, or official/timm/torchvision/HF weights "
                    "with --model) on an image folder, Fashion-MNIST or synthetic data, with the "
                    "checkpoint's own preprocessing (resize to size/crop_ratio, center crop, normalize).",
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run directory, or foreign weights")
    p.add_argument("--model", default=None, help="model name for weights without convnext metadata")
    p.add_argument("--dataset", default="folder", choices=("folder", "fashion_mnist", "synthetic"))
    p.add_argument("--data-root", default=None,
                   help="folder: ROOT with <split>/CLASS/* (or ROOT/CLASS/*); fashion_mnist: IDX directory")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--fast", action="store_true", help="run the inference-optimised copy (optimize_for_inference)")
    p.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix figure here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _dataset(args, channels: int):
    from .. import data as data_mod

    if args.dataset == "folder":
        if args.data_root is None:
            raise UsageError("--dataset folder needs --data-root DIR")
        root = Path(args.data_root)
        split_dir = root / args.split if (root / args.split).is_dir() else root
        return data_mod.ImageFolder(split_dir, channels=channels, verify=True)
    return data_mod.load_dataset(args.dataset, args.split, root=args.data_root, channels=channels)


def evaluate_checkpoint(args) -> dict:
    from .. import data as data_mod
    from ..checkpoint import load_model
    from ..train.distributed import DistInfo, ShardedSampler, resolve_device
    from ..train.loop import _limit, evaluate, make_loader

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    model, info = load_model(args.checkpoint, map_location=device, model_name=args.model)
    pre = info.preprocess
    with data_mod.print_warnings_as_lines():
        ds = _dataset(args, pre.channels)
    bad_files = [{"path": str(b.path), "reason": b.reason} for b in getattr(ds, "bad_files", [])]
    classes = list(ds.classes)
    if model.cfg.num_classes != len(classes):
        raise UsageError(f"the model has {model.cfg.num_classes} classes but the dataset has {len(classes)}; "
                         "evaluate on the dataset it was trained for")
    if info.class_names is not None and list(info.class_names) != classes:
        raise UsageError(f"the checkpoint's classes {info.class_names[:4]}... differ from the dataset's "
                         f"{classes[:4]}...; evaluate on the dataset it was trained for")
    src_channels = getattr(ds, "channels", pre.channels)
    tf = data_mod.build_eval_transform(pre.input_size, pre.crop_ratio, pre.interpolation, pre.mean, pre.std,
                                       pre.channels, src_channels)
    ds = data_mod.SeededTransform(_limit(ds, args.limit), tf)
    loader = make_loader(ds, ShardedSampler(len(ds), shuffle=False), args.batch_size, args.workers, device, False)
    net = model
    if args.fast:
        from ..infer.fuse import optimize_for_inference

        net = optimize_for_inference(model, device=device)
    result = evaluate(net, loader, device, args.amp, num_classes=len(classes), dist_info=DistInfo(device=device),
                      confusion=True)
    matrix = result.pop("confusion")
    per_class = []
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        per_class.append({"class": name, "count": total,
                          "top1": 100.0 * int(matrix[i, i]) / total if total else None})
    result.update(per_class=per_class, confusion_matrix=matrix.tolist(), classes=classes, bad_images=len(bad_files),
                  bad_files=bad_files)
    if args.confusion:
        from ..plots import plot_confusion_matrix

        result["confusion_png"] = str(plot_confusion_matrix(matrix.numpy(), classes, args.confusion))
    return result


def run(args) -> int:
    with torch.inference_mode(False):
        r = evaluate_checkpoint(args)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    skipped = f" ({r['bad_images']} unreadable file(s) skipped)" if r["bad_images"] else ""
    print(f"{r['count']} images{skipped}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    width = max(len("class"), *(len(c["class"]) for c in r["per_class"]))
    print(f"{'class':<{width}}  {'count':>6}  {'top-1':>7}")
    for c in r["per_class"]:
        acc = f"{c['top1']:.2f}" if c["top1"] is not None else "-"
        print(f"{c['class']:<{width}}  {c['count']:>6}  {acc:>7}")
    if "confusion_png" in r:
        print(f"confusion matrix: {r['confusion_png']}")
    return 0
