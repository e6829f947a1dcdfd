"""Gradient checkpointing (``--runtime.grad_checkpointing``, train/recompute.py): the memory a training step keeps
for backward, and its speed, with the blocks checkpointed and without, side by side in one process.

For each way: a model built from the same seed (with the engine's CPU swaps on a CPU, channels_last if asked), an
AdamW step on random images at --size px (cross-entropy on random labels). Measured:

- ``kept_mb``: the bytes autograd keeps for backward after one forward, besides the model's own weights (each
  storage once; ``torch.autograd.graph.saved_tensors_hooks``), the same count on any device;
- on CUDA, ``peak_mb``: ``torch.cuda.max_memory_allocated`` over a step, less what was allocated before it (the
  weights, gradients and optimizer state), and ``peak_total_mb`` with them;
- img/s: the median over --rounds interleaved rounds of --steps steps each; ``speed_ratio``, checkpointed over
  plain, from the median seconds per step.

The two ways' numbers must agree: the first step's losses are compared, bit for bit on a CPU.

    .venv/bin/python benchmarks/grad_checkpointing.py --model convnext_tiny --size 224 --batch 16 --rounds 5 \\
        --out benchmarks/results/grad_checkpointing_cpu.json
    python benchmarks/grad_checkpointing.py --device cuda --batch 128 --amp bf16 --channels-last   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import rates, save, timed_rounds  # noqa: E402
from usage import UsageExit, run_main  # noqa: E402

from convnext import create_model, list_models  # noqa: E402
from convnext.runtime import autocast  # noqa: E402
from convnext.train.accelerate import accelerate_for_training, to_channels_last  # noqa: E402
from convnext.train.recompute import set_grad_checkpointing  # noqa: E402

WAYS = ("plain", "checkpointed")
MB = 2 ** 20


def kept_bytes(model, x) -> tuple[torch.Tensor, int]:
    """One forward of ``model``: its output, and the bytes of the tensors autograd keeps for backward that are not
    the model's own parameters or buffers (each storage counted once). Inside a checkpointed block
    ``torch.utils.checkpoint``'s own hooks take over and keep nothing, so this counts what really stays in memory
    until backward."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, sum(kept.values())


def build(args, device: torch.device):
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, drop_path_rate=args.drop_path).to(device).train()
    accelerate_for_training(model, device)
    if args.channels_last:
        to_channels_last(model)
    ways = {"plain": model, "checkpointed": copy.deepcopy(model)}
    set_grad_checkpointing(ways["checkpointed"])
    return ways


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=2, help="steps per timed measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if min(args.size, args.batch, args.steps, args.rounds) < 1 or args.threads < 0:
        raise UsageExit("--size, --batch, --steps and --rounds must be >= 1 and --threads >= 0")
    if args.model not in list_models():
        raise UsageExit(f"--model {args.model} is not a registered model; `convnext list` names them")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageExit("--device cuda needs a CUDA GPU; run on the CPU with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ways = build(args, device)
    in_chans = ways["plain"].cfg.in_chans
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, in_chans, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=args.device == "cuda") for name, m in ways.items()}

    def step(name: str) -> float:
        with autocast(device, args.amp):
            loss = F.cross_entropy(ways[name](x), y)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return loss.detach()

    result: dict = {"benchmark": "grad_checkpointing", "model": args.model, "size": args.size, "batch": args.batch,
                    "device": args.device, "amp": args.amp, "channels_last": args.channels_last, "drop_path": args.drop_path,
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
                    or platform.machine()}
    first = {}
    for name in WAYS:  # the first step: the same RNG state for both, so the same stochastic-depth draws
        torch.manual_seed(2)
        with autocast(device, args.amp):
            kept = kept_bytes(ways[name], x)[1]
        if args.device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(2)
        first[name] = step(name).item()
        row = {"kept_mb": round(kept / MB, 1), "first_loss": first[name]}
        if args.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            row.update(peak_mb=round((peak - before) / MB, 1), peak_total_mb=round(peak / MB, 1))
        result.setdefault("ways", {})[name] = row
    result["same_first_loss"] = first["plain"] == first["checkpointed"]
    result["kept_ratio"] = round(result["ways"]["checkpointed"]["kept_mb"] / result["ways"]["plain"]["kept_mb"], 3)
    if args.device == "cuda":
        result["peak_ratio"] = round(result["ways"]["checkpointed"]["peak_mb"] / result["ways"]["plain"]["peak_mb"], 3)

    times: dict[str, list[float]] = {n: [] for n in WAYS}

    def measure(name: str) -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(name)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    def write(rounds_done: int, complete: bool = True) -> dict:
        img_s, median = rates(times, args.batch)
        result.update(rounds=rounds_done, complete=complete, steps_per_measurement=args.steps, img_s=img_s,
                      median_img_s=median)
        if all(times.values()):  # from the median seconds per step: img/s rounded to 0.1 is coarse for big models
            plain, checkpointed = (statistics.median(times[n]) for n in WAYS)
            result["speed_ratio"] = round(plain / checkpointed, 3)
        return save(args.out, result)

    done = timed_rounds(WAYS, measure, times, rounds=args.rounds, batch=args.batch, write=write, budget_s=0,
                        start=time.perf_counter())
    write(done)
    w = result["ways"]
    print(f"{args.model} at {args.size} px, batch {args.batch}, {args.device}: kept for backward "
          f"{w['plain']['kept_mb']} -> {w['checkpointed']['kept_mb']} MB ({result['kept_ratio']}x), "
          f"img/s {result['speed_ratio']}x" + (f", step peak {result['peak_ratio']}x" if "peak_ratio" in result else "")
          + ("" if result["same_first_loss"] else ", first losses differ"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
