"""What one CPU thread (or one GPU) trains per second for roadmap steps at a study budget (issue #16), NCHW vs
channels_last.

The study's cost is (steps x seeds x images per run) / this speed, so the budget is chosen from it. Each step's
network is built as the study builds it (`study.recipe.train_config`: the budget's width and resolution, 1 input
channel, 10 classes) with the engine's CPU accelerations, and trained on random batches with its recipe's
optimizer (SGD for ResNet-50, AdamW after). Every (step, format) pair is timed once per round, in turn
(benchmarks/rounds.py), and its best round counts.

    python benchmarks/study/step_speed.py [--size 64] [--width 0.125] [--batch 32] [--steps resnet50,...] [--out F]
    python benchmarks/study/step_speed.py --device cuda --amp bf16 --formats channels_last --size 128 --width 1 \
        --batch 128 --steps all     # the GPU budget's networks on one GPU (benchmarks/gpu_check.sh, step study)

On a GPU each timed stretch ends with a synchronize, and the numbers are one process alone on the GPU: a study
that runs several at once shares it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from convnext.models.roadmap import ROADMAP, roadmap_step
from convnext.study.recipe import get_budget, train_config
from convnext.train.accelerate import accelerate_for_training
from convnext.train.model import build_model
from convnext.train.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rounds import timed_rounds  # noqa: E402

DEFAULT_STEPS = "resnet50,roadmap_patchify,roadmap_inverted,roadmap_kernel7,roadmap_layernorm,roadmap_separate_downsampling"


def make_step(name: str, fmt: str, budget, batch: int, size: int, device: str = "cpu",
              amp: str = "none") -> Callable[[], None]:
    """One training step of roadmap step ``name`` in memory format ``fmt``, as the study builds the network."""
    cfg = train_config(roadmap_step(name), 0, budget, "fashion_mnist", "unused")
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10, in_chans=1).to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    accelerate_for_training(model, device)  # the CPU's swaps; nothing elsewhere
    opt = build_optimizer(model, cfg.opt.lr, cfg.opt.weight_decay, name=cfg.opt.optimizer, momentum=cfg.opt.momentum)
    y = torch.randint(0, 10, (batch,), device=device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up: first-call allocations and kernel selection
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", default=DEFAULT_STEPS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu (one thread) or cuda")
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--formats", default="nchw,channels_last", help="memory formats to time, comma-separated")
    p.add_argument("--budget-s", type=float, default=0, help="stop adding rounds past this many seconds (0: none)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.steps == "all":
        args.steps = ",".join(step.name for step in ROADMAP)
    formats = args.formats.split(",")
    budget = get_budget("cpu").replace(image_size=args.size, width_mult=args.width, batch_size=args.batch)
    names = [f"{step}/{fmt}" for step in args.steps.split(",") for fmt in formats]
    steps: dict[str, Callable[[], None]] = {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def measure(name: str) -> float:  # seconds per step
        if name not in steps:
            steps[name] = make_step(*name.split("/"), budget, args.batch, args.size, args.device, args.amp)
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            steps[name]()
        sync()
        return (time.perf_counter() - start) / args.iters

    def rows() -> list[dict]:
        out = []
        for step in args.steps.split(","):
            row: dict = {"step": step}
            for fmt in formats:
                if times[f"{step}/{fmt}"]:
                    row[f"{fmt}_img_s"] = round(args.batch / min(times[f"{step}/{fmt}"]), 1)
            if {"nchw_img_s", "channels_last_img_s"} <= set(row):
                row["channels_last_speedup"] = round(row["channels_last_img_s"] / row["nchw_img_s"], 2)
            out.append(row)
        return out

    def write(rounds_done: int, complete: bool = True) -> None:
        if not args.out:
            return
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu, 1 thread"
        record = {"size": args.size, "width_mult": args.width, "batch": args.batch, "device": device, "amp": args.amp,
                  "rounds": rounds_done, "iters": args.iters, "best_round_counts": True, "torch": torch.__version__,
                  "machine": platform.processor() or platform.machine(), "complete": complete, "results": rows(),
                  "command": "python benchmarks/study/step_speed.py " + " ".join(
                      f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")

    times: dict[str, list[float]] = {name: [] for name in names}
    done = timed_rounds(names, measure, times, rounds=args.rounds, batch=args.batch, write=write, budget_s=args.budget_s,
                        start=time.perf_counter())
    write(done)
    for row in rows():
        print(f"{row['step']:34s} " + "   ".join(f"{fmt} {row.get(fmt + '_img_s', 0):8.1f} img/s" for fmt in formats)
              + (f"   x{row['channels_last_speedup']:.2f}" if "channels_last_speedup" in row else ""), flush=True)


if __name__ == "__main__":
    main()
