"""Probe for the roadmap study's plateau budget (issue #16): how far the first (ResNet-50, original recipe) and
the last (ConvNeXt-T's design, modern recipe) roadmap steps get in E passes over the 60,000 training images,
and what a pass costs on one CPU thread, with the batched input path (data.on_device on the CPU: random
resized crop + flip as whole-batch ops, no per-sample RandAugment).

Validation: 10,000 images held out of the training split (data.holdout), never the test split: this probe
chooses a budget. Usage (one run per process, one thread each, resumable through the engine's run dirs):

    .venv/bin/python benchmarks/study/plateau_probe.py STEP EPOCHS OUT_DIR [IMAGE_SIZE (default 64)]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from convnext.models.roadmap import roadmap_step
from convnext.study.recipe import get_budget, train_config
from convnext.train import train


def main() -> int:
    step_name, epochs, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    torch.set_num_threads(1)
    budget = get_budget("cpu").replace(train_images=50000, epochs=epochs, val_images=10000, save_every_steps=500,
                                          image_size=size)
    step = roadmap_step(step_name)
    cfg = train_config(step, 0, budget, "fashion_mnist", out / "runs")
    cfg = cfg.replace({"data.holdout": 10000, "data.limit_val": 0, "data.on_device": True,
                       "aug.randaugment": False, "aug.random_erasing": 0.0,
                       "runtime.log_every": 100, "runtime.run_name": f"{step_name}-e{epochs}-{size}px"})
    started = time.time()
    summary = train(cfg)
    record = {"step": step_name, "epochs": epochs, "wall_s": time.time() - started,
              "val_top1_per_epoch": [h["val_top1"] for h in summary["history"]],
              "final_val_top1": summary["final_val_top1"], "steps": summary["steps"],
              "config": {k: v for k, v in cfg.to_dict().items() if k in ("opt", "aug", "reg", "data")}}
    out.mkdir(parents=True, exist_ok=True)
    record["image_size"] = size
    (out / f"{step_name}-e{epochs}-{size}px.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("step", "epochs", "image_size", "wall_s", "val_top1_per_epoch")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
