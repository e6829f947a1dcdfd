"""Depthwise-conv weight gradient on CPU: PyTorch's convolution_backward vs our grouped-conv form.

For each ConvNeXt-T stage shape (7x7 depthwise, batch 8 at 224 px), times the weight gradient
alone, in NCHW and channels_last memory, and checks our result against PyTorch's (relative max
difference). The medians of --iters repetitions, both methods interleaved in each repetition.

    .venv/bin/python benchmarks/depthwise_backward.py --batch 8 --iters 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from convnext.train.accelerate import depthwise_weight_grad

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]  # ConvNeXt-T (channels, feature-map side) at 224 px
DEPTHS = [3, 3, 9, 3]


def stock(x, g, w):
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [3, 3], [1, 1], False, [0, 0], x.shape[1],
                                               [False, True, False])[1]


def ours(x, g, w):
    return depthwise_weight_grad(x, g, (7, 7), (1, 1), (3, 3), (1, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "depthwise_backward.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, load_before = [], os.getloadavg()
    for (c, side), depth in zip(STAGES, DEPTHS):
        for fmt in ("nchw", "channels_last"):
            x = torch.randn(args.batch, c, side, side)
            g = torch.randn(args.batch, c, side, side)
            if fmt == "channels_last":
                x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
            w = torch.randn(c, 1, 7, 7)
            ref = stock(x, g, w)
            err = ((ours(x, g, w) - ref).abs().max() / ref.abs().max()).item()
            times = {"stock": [], "ours": []}
            for _ in range(2):
                stock(x, g, w), ours(x, g, w)
            for _ in range(args.iters):
                for name, fn in (("stock", stock), ("ours", ours)):
                    t0 = time.perf_counter()
                    fn(x, g, w)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"channels": c, "side": side, "blocks": depth, "memory_format": fmt,
                         "stock_ms": round(med["stock"], 3), "ours_ms": round(med["ours"], 3),
                         "speedup": round(med["stock"] / med["ours"], 2), "rel_max_diff": float(f"{err:.2e}")})
            r = rows[-1]
            print(f"{c:4d}ch {side:2d}px {fmt:<13} stock {r['stock_ms']:7.2f} ms  ours {r['ours_ms']:6.2f} ms  "
                  f"{r['speedup']:5.2f}x  rel diff {err:.1e}")
    per_step = {fmt: {k: round(sum(r[k] * r["blocks"] for r in rows if r["memory_format"] == fmt), 1)
                      for k in ("stock_ms", "ours_ms")} for fmt in ("nchw", "channels_last")}
    for fmt, v in per_step.items():
        print(f"ConvNeXt-T step ({fmt}): all 18 depthwise weight gradients {v['stock_ms']} ms stock vs "
              f"{v['ours_ms']} ms ours")
    result = {"benchmark": "depthwise_backward", "batch": args.batch, "iters": args.iters, "rows": rows,
              "per_convnext_tiny_step_ms": per_step, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
