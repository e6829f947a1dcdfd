"""The patchify convs (kernel = stride: the stem, the 2x2 stride-2 downsampling layers) on CPU, forward and backward,
as oneDNN's strided convolution and as one GEMM over the patches (``PatchGemm`` below). A swap tried for the
training engine on 2026-12-07 and not kept: the convs alone ran 1.0-1.8x faster this way, the recipe's whole step
did not (docs/recipes.md, section 5, fifteenth round).

For each such conv of the 30-minute recipe's network (``convnext_micro_bn_small_input`` at widths 48-96-192, 28 px,
batch 64) and of ConvNeXt-T (224 px, batch 8), on channels-last inputs as training holds them: the medians of
--iters interleaved repetitions of each way's forward and backward (autograd), and whether the GEMM's output and
gradients agree with the conv's (to float rounding: the sums run in another order).

Then ``--step-rounds`` rounds of the recipe's real training step (``arch_speed.undo_step_rates``: the engine's step
with its CPU swaps, Muon, Mixup/CutMix on half the batches, channels_last, one thread, batch 64) with the GEMMs
swapped in for the stem and downsampling convs and as the engine runs it, interleaved: the img/s ratio the swap
would buy in training.

    .venv/bin/python benchmarks/patchify_gemm.py --iters 15 --step-rounds 20 --step-steps 10
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


# (network, batch, [(in channels, out channels, kernel = stride, input side)])
NETWORKS = [("recipe (micro_bn 48-96-192, 28 px)", 64, [(1, 48, 2, 28), (48, 96, 2, 14), (96, 192, 2, 7)]),
            ("convnext_tiny (224 px)", 8, [(3, 96, 4, 224), (96, 192, 2, 56), (192, 384, 2, 28), (384, 768, 2, 14)])]


class PatchGemm(nn.Conv2d):
    """An nn.Conv2d whose kernel equals its stride, run on a channels-last map (with gradients) as one GEMM: the
    patches do not overlap, so each output pixel is a (k x k x in) window of the NHWC input times the
    (out, k x k x in) weight matrix. Rows and columns past the last whole patch are left out, as the conv leaves
    them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        n, c, h, w = x.shape
        k = self.kernel_size[0]
        rows, cols = h // k, w // k
        patches = (x[:, :, : rows * k, : cols * k].permute(0, 2, 3, 1)  # NHWC: the memory as it is
                   .reshape(n, rows, k, cols, k, c).transpose(2, 3).reshape(n * rows * cols, k * k * c))
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, k * k * c)  # (out, kh, kw, in)
        return F.linear(patches, weight, self.bias).view(n, rows, cols, -1).permute(0, 3, 1, 2)


def is_patchify(m: nn.Module) -> bool:
    """A plain conv whose kernel equals its stride (k > 1), unpadded, ungrouped."""
    return (type(m) is nn.Conv2d and m.kernel_size[0] == m.kernel_size[1] > 1 and m.stride == m.kernel_size
            and m.groups == 1 and m.padding == (0, 0) and m.dilation == (1, 1))


def pair(cin: int, cout: int, k: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The stock conv and a PatchGemm with the same weights, both channels_last as training holds them."""
    conv = nn.Conv2d(cin, cout, k, stride=k).to(memory_format=torch.channels_last)
    gemm = nn.Conv2d(cin, cout, k, stride=k).to(memory_format=torch.channels_last)
    gemm.load_state_dict(conv.state_dict())
    gemm.__class__ = PatchGemm
    return conv, gemm


def forward_backward(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    return y, x.grad, module.weight.grad, module.bias.grad


def agree(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.allclose(u, v, rtol=1e-4, atol=1e-4 * v.abs().max().item()) for u, v in zip(a, b))


def gemm_convs(trainer) -> None:
    """Swap PatchGemm in for the engine's stem and downsampling convs (the trainer has made the model channels_last)."""
    convs = [m for m in trainer.model.modules() if is_patchify(m)]
    if not convs:
        raise RuntimeError("the recipe's model has no patchify conv to swap: this comparison would measure nothing")
    for m in convs:
        m.__class__ = PatchGemm


def main() -> int:
    args = swap_benchmark_args(__doc__.splitlines()[0], Path(__file__).parent / "results" / "patchify_gemm.json")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, load_before = [], os.getloadavg()
    for network, batch, shapes in NETWORKS:
        for cin, cout, k, side in shapes:
            conv, gemm = pair(cin, cout, k)
            x = torch.randn(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
            g = torch.randn(batch, cout, side // k, side // k).contiguous(memory_format=torch.channels_last)
            same = agree(forward_backward(gemm, x, g), forward_backward(conv, x, g))
            med = interleaved_ms({"conv": lambda: forward_backward(conv, x, g),
                                  "gemm": lambda: forward_backward(gemm, x, g)}, args.iters)
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
        step = recipe_step_rates(args.dataset, {"patchify_gemm": gemm_convs, "stock_conv": None}, args.step_rounds,
                                 args.step_steps)
        print(f"recipe step: {step['img_per_s']['patchify_gemm']} img/s with the GEMMs, "
              f"{step['img_per_s']['stock_conv']} with nn.Conv2d: {step['ratio']:.3f}x "
              f"(best of {step['ratio_best_of']:.3f}x)")
    result = {"benchmark": "patchify_gemm", "iters": args.iters, "threads": args.threads, "rows": rows,
              "per_step_ms": per_step, "recipe_step": step, **cpu_record(load_before)}
    save(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
