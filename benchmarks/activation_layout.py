"""GELU on CPU, forward and backward, on a channels_last activation as the block holds it vs on its NHWC view.

A channels_last (N, C, H, W) tensor is NHWC memory; ``x.permute(0, 2, 3, 1)`` is the same memory as a contiguous
tensor. For each hidden activation of the 30-minute recipe's network (``convnext_micro_bn_small_input`` at widths
48-96-192, MLP ratio 2, 28 px, batch 64) and of ConvNeXt-T (224 px, batch 8), times GELU's forward and backward
(autograd, as training runs it) both ways, in interleaved repetitions, and checks that the NHWC view's output and
input gradient are GELU's on contiguous (NCHW) memory bit for bit. The medians of --iters repetitions.

Then ``--step-rounds`` rounds of the recipe's real training step (``arch_speed.variant_step``: the engine's step
with its CPU swaps, Muon, Mixup/CutMix on half the batches, channels_last, one thread, batch 64) as the engine
runs it (``NHWCGELU``) and with nn.GELU put back, interleaved: the img/s ratio the swap buys in training.

    .venv/bin/python benchmarks/activation_layout.py --iters 15 --step-rounds 8
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the shared timing loop
sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))
from arch_speed import recipe_step_rates, swap_benchmark_args  # noqa: E402
from rounds import cpu_record, interleaved_ms, save  # noqa: E402
from usage import run_main  # noqa: E402

# (network, batch, [(hidden channels, feature-map side, blocks)])
NETWORKS = [("recipe (micro_bn 48-96-192, 28 px)", 64, [(96, 14, 1), (192, 7, 1), (384, 3, 1)]),
            ("convnext_tiny (224 px)", 8, [(384, 56, 3), (768, 28, 3), (1536, 14, 9), (3072, 7, 3)])]


def as_held(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU on the 4-D channels_last tensor: (output, input gradient)."""
    x = x.detach().requires_grad_()
    y = F.gelu(x)
    y.backward(g)
    return y, x.grad


def on_nhwc(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU on the contiguous NHWC view of the same memory, the result viewed back as (N, C, H, W)."""
    x = x.detach().requires_grad_()
    y = F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    y.backward(g)
    return y, x.grad


def stock_gelu(trainer) -> None:
    """Undo the engine's NHWCGELU swap: the model's GELUs as built."""
    from convnext.train.accelerate import NHWCGELU

    for m in trainer.model.modules():
        if type(m) is NHWCGELU:
            m.__class__ = nn.GELU


def main() -> int:
    args = swap_benchmark_args(__doc__, Path(__file__).parent / "results" / "activation_layout.json", raw=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, load_before = [], os.getloadavg()
    for network, batch, shapes in NETWORKS:
        for c, side, blocks in shapes:
            x, g = (torch.randn(batch, c, side, side).contiguous(memory_format=torch.channels_last) for _ in "xg")
            (y1, d1), (y2, d2) = on_nhwc(x, g), as_held(x.contiguous(), g.contiguous())
            same = torch.equal(y1, y2) and torch.equal(d1, d2)  # the NHWC view is GELU on contiguous memory
            med = interleaved_ms({"as_held": lambda: as_held(x, g), "nhwc": lambda: on_nhwc(x, g)}, args.iters,
                                 warmup=2)
            rows.append({"network": network, "batch": batch, "channels": c, "side": side, "blocks": blocks,
                         "as_held_ms": round(med["as_held"], 3), "nhwc_ms": round(med["nhwc"], 3),
                         "speedup": round(med["as_held"] / med["nhwc"], 2), "equal_to_nchw_gelu": same})
            r = rows[-1]
            print(f"{network:<36} {c:5d}ch {side:2d}px  as held {r['as_held_ms']:7.2f} ms  NHWC view "
                  f"{r['nhwc_ms']:7.2f} ms  {r['speedup']:5.2f}x  equal to NCHW GELU: {same}")
    per_step = {network: {k: round(sum(r[k] * r["blocks"] for r in rows if r["network"] == network), 2)
                          for k in ("as_held_ms", "nhwc_ms")} for network, _, _ in NETWORKS}
    for network, v in per_step.items():
        print(f"{network}: every block's GELU, forward and backward, {v['as_held_ms']} ms as held vs "
              f"{v['nhwc_ms']} ms on the NHWC view")
    step = None
    if args.step_rounds:
        step = recipe_step_rates(args.dataset, {"nhwc_gelu": None, "stock_gelu": stock_gelu}, args.step_rounds,
                                 args.step_steps)
        print(f"recipe step: {step['img_per_s']['nhwc_gelu']} img/s with NHWCGELU, {step['img_per_s']['stock_gelu']} "
              f"with nn.GELU: {step['ratio']:.3f}x (best of {step['ratio_best_of']:.3f}x)")
    result = {"benchmark": "activation_layout", "iters": args.iters, "threads": args.threads, "rows": rows,
              "per_step_ms": per_step, "recipe_step": step, **cpu_record(load_before)}
    save(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
