"""Training throughput (img/s) of our ConvNeXt-T training step vs plain timm convnext_tiny loops.

Same process, same CPU threads, same batch (random 224x224 images), same precision (fp32 unless
--amp bf16), same optimizer (AdamW, lr 4e-3, weight decay 0.05; ours with its no-decay groups).
"Ours" is the engine's real optimizer step (``Trainer._train_step``): forward, loss, backward,
gradient-norm NaN/Inf guard, AdamW, lr schedule; EMA and Mixup off so both do the same work.

Loops, timed in alternating rounds so machine noise hits all alike:
  ours, ours_channels_last          the engine, NCHW / channels_last
  timm                              a plain loop: timm model, default torch.optim.AdamW, NCHW
  timm_channels_last, timm_fused_adamw, timm_fused_adamw_channels_last
                                    the same loop with each speed setting a timm user could turn on;
                                    "timm_best" in the result is the fastest of the four
  --ablation adds ours_stock_dwconv: the engine with PyTorch's own depthwise-conv backward, to show
  what our depthwise weight gradient (train/accelerate.py) is worth.

The machine is shared and noisy (single steps move by +-15 %), so the default is many short rounds
(15 rounds of 1 step per loop) and the ratios are of medians; the ratios of the fastest step of each
loop ("best of", which interference can only slow) are reported next to them.

    .venv/bin/python benchmarks/train_throughput.py --batch 8 --ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def ours_step_fn(batch: int, amp: str, channels_last: bool, out: str, drop_path: float, stock_dwconv: bool = False):
    from convnext.train import preset
    from convnext.train.loop import Trainer
    from convnext.train.distributed import DistInfo

    cfg = preset("paper").replace({
        "model.name": "convnext_tiny", "data.dataset": "synthetic", "data.synthetic_samples": batch,
        "data.synthetic_classes": 1000, "data.batch_size": batch, "data.workers": 0,
        "aug.mixup": 0.0, "aug.cutmix": 0.0, "aug.label_smoothing": 0.0, "reg.ema": False,
        "opt.lr_base_batch": None, "opt.epochs": 1, "opt.warmup_epochs": 0.0,
        "runtime.out": out, "runtime.amp": amp, "runtime.channels_last": channels_last,
        "runtime.tensorboard": False, "runtime.progress": False, "reg.drop_path": drop_path,
    })
    trainer = Trainer(cfg, DistInfo())
    trainer.train_net.train()
    if stock_dwconv:
        from convnext.train.accelerate import DepthwiseConv2d

        for m in trainer.model.modules():
            if isinstance(m, DepthwiseConv2d):
                m.forward = types.MethodType(torch.nn.Conv2d.forward, m)

    def step(x, y):
        trainer._train_step([(x, y)])

    return step


def timm_step_fn(amp: str, drop_path: float, channels_last: bool = False, fused: bool = False):
    import timm

    model = timm.create_model("convnext_tiny", num_classes=1000, drop_path_rate=drop_path)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05, fused=fused or None)

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per round per loop")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", default="none", choices=("none", "bf16"))
    ap.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of both models "
                    "(0.1: the paper's ConvNeXt-T recipe)")
    ap.add_argument("--ablation", action="store_true", help="add ours with PyTorch's stock depthwise backward")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch,))
    with tempfile.TemporaryDirectory() as tmp:
        loops = {
            "ours": ours_step_fn(args.batch, args.amp, False, tmp + "/a", args.drop_path),
            "ours_channels_last": ours_step_fn(args.batch, args.amp, True, tmp + "/b", args.drop_path),
            "timm": timm_step_fn(args.amp, args.drop_path),
            "timm_channels_last": timm_step_fn(args.amp, args.drop_path, channels_last=True),
            "timm_fused_adamw": timm_step_fn(args.amp, args.drop_path, fused=True),
            "timm_fused_adamw_channels_last": timm_step_fn(args.amp, args.drop_path, channels_last=True, fused=True),
        }
        if args.ablation:
            loops["ours_stock_dwconv"] = ours_step_fn(args.batch, args.amp, False, tmp + "/c", args.drop_path,
                                                       stock_dwconv=True)
        load_before = os.getloadavg()
        for name, step in loops.items():
            for _ in range(args.warmup):
                step(x, y)
        times: dict[str, list[float]] = {k: [] for k in loops}
        for r in range(args.rounds):
            for name, step in loops.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(x, y)
                times[name].append((time.perf_counter() - t0) / args.steps)
                print(f"round {r}: {name:<20} {args.batch / times[name][-1]:7.2f} img/s", file=sys.stderr)
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    best = {k: args.batch / min(v) for k, v in times.items()}  # "best of": each loop's fastest step

    def ratios(rate: dict[str, float]) -> tuple[str, dict[str, float], dict[str, float]]:
        """(fastest timm loop, every loop vs plain timm, ours vs that fastest timm loop)."""
        fastest = max((k for k in rate if k.startswith("timm")), key=rate.get)
        return (fastest, {k: round(v / rate["timm"], 3) for k, v in rate.items() if k != "timm"},
                {k: round(v / rate[fastest], 3) for k, v in rate.items() if k.startswith("ours")})

    timm_best, vs_timm, vs_timm_best = ratios(ips)
    _, best_vs_timm, best_vs_timm_best = ratios(best)
    result = {
        "benchmark": "train_throughput", "model": "convnext_tiny", "resolution": 224, "batch": args.batch,
        "drop_path": args.drop_path,
        "amp": args.amp, "threads": torch.get_num_threads(), "steps_per_round": args.steps, "rounds": args.rounds,
        "img_per_s": {k: round(v, 3) for k, v in ips.items()},
        "ratio_vs_timm": vs_timm,
        "timm_best": timm_best,
        "ratio_vs_timm_best": vs_timm_best,
        "best_of_img_per_s": {k: round(v, 3) for k, v in best.items()},
        "best_of_ratio_vs_timm": {k: v for k, v in best_vs_timm.items() if k.startswith("ours")},
        "best_of_ratio_vs_timm_best": best_vs_timm_best,
        "step_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
