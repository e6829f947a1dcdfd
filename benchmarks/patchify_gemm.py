"""The patchify convs (kernel = stride: the stem, the 2x2 stride-2 downsampling layers) on CPU, forward and backward,
as oneDNN's strided convolution and as the engine's GEMM over the patches (``PatchifyConv2d``, train/accelerate.py).

For each such conv of the 30-minute recipe's network (``convnext_micro_bn_small_input`` at widths 48-96-192, 28 px,
batch 64) and of ConvNeXt-T (224 px, batch 8), on channels-last inputs as training holds them: the medians of
--iters interleaved repetitions of each way's forward and backward (autograd), and whether the GEMM's output and
gradients agree with the conv's (to float rounding: the sums run in another order).

Then ``--step-rounds`` rounds of the recipe's real training step (``arch_speed.undo_step_rates``: the engine's step
with its CPU swaps, Muon, Mixup/CutMix on half the batches, channels_last, one thread, batch 64) as the engine runs
it and with the stock convs put back, interleaved: the img/s ratio the swap buys in training.

    .venv/bin/python benchmarks/patchify_gemm.py --iters 15 --step-rounds 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the shared timing loop
sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))
from activation_layout import RECIPE  # noqa: E402
from arch_speed import undo_step_rates  # noqa: E402
from rounds import cpu_record, save  # noqa: E402
from usage import UsageExit, run_main  # noqa: E402

from convnext.train.accelerate import PatchifyConv2d  # noqa: E402

# (network, batch, [(in channels, out channels, kernel = stride, input side)])
NETWORKS = [("recipe (micro_bn 48-96-192, 28 px)", 64, [(1, 48, 2, 28), (48, 96, 2, 14), (96, 192, 2, 7)]),
            ("convnext_tiny (224 px)", 8, [(3, 96, 4, 224), (96, 192, 2, 56), (192, 384, 2, 28), (384, 768, 2, 14)])]


def pair(cin: int, cout: int, k: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The stock conv and a PatchifyConv2d with the same weights, both channels_last as training holds them."""
    conv = nn.Conv2d(cin, cout, k, stride=k).to(memory_format=torch.channels_last)
    gemm = nn.Conv2d(cin, cout, k, stride=k).to(memory_format=torch.channels_last)
    gemm.load_state_dict(conv.state_dict())
    gemm.__class__ = PatchifyConv2d
    return conv, gemm


def forward_backward(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    return y, x.grad, module.weight.grad, module.bias.grad


def agree(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.allclose(u, v, rtol=1e-4, atol=1e-4 * v.abs().max().item()) for u, v in zip(a, b))


def stock_convs(trainer) -> None:
    """Undo the engine's PatchifyConv2d swap: the stem and downsampling convs as built."""
    for m in trainer.model.modules():
        if type(m) is PatchifyConv2d:
            m.__class__ = nn.Conv2d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step-rounds", type=int, default=0, help="rounds of the recipe's step each way (0 = none)")
    ap.add_argument("--step-steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--dataset", default="fashion_mnist", help="the recipe step's data (synthetic: no download)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "patchify_gemm.json"))
    args = ap.parse_args()
    if args.iters < 1 or args.threads < 1 or args.step_rounds < 0 or args.step_steps < 1:
        raise UsageExit("--iters, --threads and --step-steps must be >= 1, --step-rounds >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, load_before = [], os.getloadavg()
    for network, batch, shapes in NETWORKS:
        for cin, cout, k, side in shapes:
            conv, gemm = pair(cin, cout, k)
            x = torch.randn(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
            g = torch.randn(batch, cout, side // k, side // k).contiguous(memory_format=torch.channels_last)
            same = agree(forward_backward(gemm, x, g), forward_backward(conv, x, g))
            times: dict[str, list[float]] = {"conv": [], "gemm": []}
            for _ in range(args.iters):
                for name, module in (("conv", conv), ("gemm", gemm)):
                    t0 = time.perf_counter()
                    forward_backward(module, x, g)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            med = {n: statistics.median(v) for n, v in times.items()}
            rows.append({"network": network, "batch": batch, "in": cin, "out": cout, "kernel": k, "side": side,
                         "conv_ms": round(med["conv"], 3), "gemm_ms": round(med["gemm"], 3),
                         "speedup": round(med["conv"] / med["gemm"], 2), "agrees_with_conv": same})
            r = rows[-1]
            print(f"{network:<36} {cin:4d}->{cout:<4d} k{k} {side:3d}px  conv {r['conv_ms']:8.2f} ms  GEMM "
                  f"{r['gemm_ms']:8.2f} ms  {r['speedup']:5.2f}x  agrees: {same}")
    per_step = {network: {k: round(sum(r[k] for r in rows if r["network"] == network), 2)
                          for k in ("conv_ms", "gemm_ms")} for network, _, _ in NETWORKS}
    step = None
    if args.step_rounds:
        from convnext.train.config import load_config

        cfg = load_config(preset_name="small", overrides=[*RECIPE, f"data.dataset={args.dataset}"])
        step = {"settings": RECIPE, "dataset": args.dataset,
                **undo_step_rates(cfg, {"patchify_gemm": None, "stock_conv": stock_convs}, args.step_rounds,
                                  args.step_steps)}
        print(f"recipe step: {step['img_per_s']['patchify_gemm']} img/s with PatchifyConv2d, "
              f"{step['img_per_s']['stock_conv']} with nn.Conv2d: {step['ratio']:.3f}x "
              f"(best of {step['ratio_best_of']:.3f}x)")
    result = {"benchmark": "patchify_gemm", "iters": args.iters, "threads": args.threads, "rows": rows,
              "per_step_ms": per_step, "recipe_step": step, **cpu_record(load_before)}
    save(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
