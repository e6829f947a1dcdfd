"""Probe for the roadmap study's plateau budget (issue #16): how far a roadmap step gets in E passes over 50,000
training images, and what a pass costs on one CPU thread, with the batched input path (data.on_device on the CPU:
the augmentation as whole-batch ops, no per-sample RandAugment).

Validation: 10,000 images held out of the training split (data.holdout), never the test split: this probe
chooses a budget and a recipe. One run per process, one thread, resumable through the engine's run dirs:

    .venv/bin/python benchmarks/study/plateau_probe.py STEP EPOCHS OUT_DIR [--size 64] [--batch 32]
        [--width 0.125] [--budget cpu] [--tag NAME] [--set aug.mixup=0 --set opt.lr=4e-3 ...]

Without --budget the run takes the short study's recipe (budget ``cpu_short``: 64 px, batch 32) less what the batched
input path cannot do (RandAugment, erasing), as the runs of plateau_probe_e2.json did; with --budget it takes that
budget's recipe (plateau_probe_32px.json: ``--budget gpu``), and --set overrides any engine setting on top.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from convnext.models.roadmap import roadmap_step
from convnext.study.recipe import get_budget, train_config
from convnext.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step")
    p.add_argument("epochs", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("size", type=int, nargs="?", default=None, help="image size (also --size)")
    p.add_argument("--size", dest="size_opt", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the budget's)")
    p.add_argument("--width", type=float, default=None, help="width multiplier (default: the budget's)")
    p.add_argument("--budget", default=None, help="the study budget whose recipe the run takes (default: cpu_short, "
                                                  "without RandAugment or erasing)")
    p.add_argument("--tag", default="", help="suffix of the run's name and JSON file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine setting on top (YAML value), repeatable")
    args = p.parse_args()
    torch.set_num_threads(1)
    size = args.size_opt or args.size
    budget = get_budget(args.budget or "cpu_short").replace(
        train_images=50000, epochs=args.epochs, val_images=10000, save_every_steps=500, image_size=size,
        batch_size=args.batch, width_mult=args.width)
    size = budget.image_size
    name = f"{args.step}-e{args.epochs}-{size}px" + (f"-{args.tag}" if args.tag else "")
    cfg = train_config(roadmap_step(args.step), 0, budget, "fashion_mnist", args.out / "runs")
    values = {"data.holdout": 10000, "data.limit_val": 0, "data.on_device": True, "runtime.log_every": 100,
              "runtime.run_name": name}
    if not args.budget:  # the short study's recipe without what the batched input path cannot do
        values.update({"aug.randaugment": False, "aug.random_erasing": 0.0})
    cfg = cfg.replace(values).replace(args.sets)  # --set on top, read as `convnext train --set` reads it
    started = time.time()
    summary = train(cfg)
    history = summary["history"]
    record = {"step": args.step, "epochs": args.epochs, "image_size": size, "budget": args.budget, "tag": args.tag,
              "sets": args.sets, "wall_s": time.time() - started,
              "val_top1_per_epoch": [h["val_top1"] for h in history],
              "val_ema_top1_per_epoch": [h.get("ema_top1") for h in history],
              "final_val_top1": summary["final_val_top1"], "steps": summary["steps"],
              "config": {k: v for k, v in cfg.to_dict().items() if k in ("opt", "aug", "reg", "data")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("step", "epochs", "image_size", "tag", "wall_s", "val_top1_per_epoch",
                                             "val_ema_top1_per_epoch")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
