"""How many training images per second each architecture variant of a recipe buys, timed side by side.

A recipe with a fixed time budget (docs/recipes.md, section 5: 30 minutes of the 2-core CPU) trades architecture
against epochs: a variant that costs 1.2x per image gets 1/1.2 of the epochs. This script measures that ratio on the
engine's real training step (``Trainer._train_step``: forward, loss, Mixup/CutMix, backward, gradient guard, AdamW,
EMA, the CPU accelerations) over the loader's first batches in turn, for the recipe's settings (the ``small``
preset, then ``--set``) and each variant's own settings on top, in interleaved rounds so machine noise hits every
variant alike. Ratios are of median img/s to the
first variant's, with the ratios of the fastest round ("best of", which interference can only slow) beside them.

Each variant's step is also counted by ``torch.utils.flop_counter`` (the convolutions and matrix products, forward
and backward, and Muon's Newton-Schulz iterations where it is the optimizer, per training image) and its median rate
given in GFLOP/s. ``--sgemm N`` times an N x N x N float32 matrix product at the same threads in every round, just
before the variants, and gives each variant's rate as a fraction of it: how far the step is from what the machine's
best-running kernel does, which bounds how many more epochs a faster step could buy in a fixed time.

    python benchmarks/recipes/arch_speed.py --threads 2 \\
        --set model.overrides.dims=[48,96,192] model.name=convnext_micro_bn_small_input \\
        --variant base --variant "d112 model.overrides.depths=[1,1,2]" --out benchmarks/results/recipes/speed.json

A variant is ``NAME`` followed by zero or more ``section.field=value`` settings, separated by spaces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared timing and usage modules
import train_throughput  # noqa: E402
from rounds import timed_rounds  # noqa: E402
from usage import UsageExit, run_main  # noqa: E402

from convnext.errors import UsageError  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME key=value ..."`` -> (NAME, ["key=value", ...])."""
    words = text.split()
    if not words or "=" in words[0]:
        raise UsageExit(f"variant {text!r} must start with a name, e.g. \"d112 model.overrides.depths=[1,1,2]\"")
    return words[0], words[1:]


BATCHES = 8  # distinct training batches each variant's steps cycle over


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` as torch.utils.flop_counter counts them (convolutions and matrix products,
    forward, backward and the optimizer's: Muon's Newton-Schulz iterations; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def sgemm_seconds(n: int, repeats: int = 3) -> float:
    """Seconds per float32 n x n x n matrix product, the mean of ``repeats`` after one untimed."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - t0) / repeats


def variant_step(cfg, tmp: str, batches: int = BATCHES, adjust=None):
    """The engine's training step for ``cfg``, cycling over the first ``batches`` batches of its training loader
    (other images each step, as in training, not one cache-warm batch). ``adjust(trainer)``, if given, runs on the
    built trainer first (a benchmark that undoes one of the engine's swaps)."""
    from convnext.train.distributed import DistInfo
    from convnext.train.loop import Trainer

    trainer = Trainer(cfg.replace({"runtime.out": tmp}), DistInfo(device=torch.device("cpu")))
    if adjust is not None:
        adjust(trainer)
    trainer.train_net.train()
    loader = iter(trainer.train_loader)
    data = [next(loader) for _ in range(min(batches, trainer.steps_per_epoch))]
    run = train_throughput.engine_step(trainer)  # the step as the engine's epoch loop runs it
    turn = itertools.cycle(data)

    def step() -> None:
        run(*next(turn))

    return step, data[0][0].shape[0], sum(p.numel() for p in trainer.model.parameters()), len(data)


# The 30-minute recipe's training (Muon, one process of one thread at batch 64, channels_last) on top of the small
# preset: the step the swap benchmarks (activation_layout.py, patchify_gemm.py) time their swaps in.
RECIPE = ["model.name=convnext_micro_bn_small_input", "model.overrides.dims=[48,96,192]", "data.image_size=28",
          "data.batch_size=64", "aug.crop_padding=2", "aug.hflip=0.5", "aug.label_smoothing=0.1", "aug.mixup=0.8",
          "aug.cutmix=1.0", "aug.mixup_prob=0.5", "reg.ema_decay=0.999", "opt.optimizer=muon", "opt.lr=8e-3",
          "runtime.channels_last=true", "runtime.tensorboard=false", "runtime.plots=false",
          "runtime.progress=false", "data.workers=0"]


def recipe_step_rates(dataset: str, ways: dict, rounds: int, steps: int) -> dict:
    """``undo_step_rates`` for RECIPE's step on ``dataset``, with the settings it ran."""
    from convnext.train.config import load_config

    cfg = load_config(preset_name="small", overrides=[*RECIPE, f"data.dataset={dataset}"])
    return {"settings": RECIPE, "dataset": dataset, **undo_step_rates(cfg, ways, rounds, steps)}


def swap_benchmark_args(description: str, default_out: Path, raw: bool = False) -> argparse.Namespace:
    """The flags of a swap benchmark (a module against its stock form, then RECIPE's step both ways), checked: bad
    values end as one line and exit 2 (``UsageExit``) before anything is written."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    ap = argparse.ArgumentParser(description=description, formatter_class=formatter)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step-rounds", type=int, default=0, help="rounds of the recipe's step each way (0 = none)")
    ap.add_argument("--step-steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--dataset", default="fashion_mnist", help="the recipe step's data (synthetic: no download)")
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args()
    if args.iters < 1 or args.threads < 1 or args.step_rounds < 0 or args.step_steps < 1:
        raise UsageExit("--iters, --threads and --step-steps must be >= 1, --step-rounds >= 0")
    return args


def undo_step_rates(cfg, ways: dict, rounds: int, steps: int, warmup: int = 3) -> dict:
    """img/s of the engine's step for ``cfg`` built each of ``ways`` (name -> ``adjust(trainer)`` or None: the engine
    as it is, or with one of its swaps undone), in interleaved rounds of ``steps`` steps after ``warmup`` untimed.
    Ratios are the first way's to the second's: of the medians, and of the fastest rounds ("best of")."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, adjust in ways.items():
            torch.manual_seed(0)
            runs[name], batch, _, _ = variant_step(cfg, f"{tmp}/{name}", adjust=adjust)
            for _ in range(warmup):
                runs[name]()

        def measure(name: str) -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            return (time.perf_counter() - t0) / steps

        times: dict[str, list[float]] = {name: [] for name in runs}
        timed_rounds(runs, measure, times, rounds=rounds, batch=batch, write=lambda *_, **__: None, budget_s=0,
                     start=time.perf_counter(), width=max(map(len, runs)))
    first, second = list(ways)[:2]
    rate = {n: batch / statistics.median(t) for n, t in times.items()}
    return {"batch": batch, "rounds": rounds, "steps_per_round": steps,
            "img_per_s": {n: round(v, 1) for n, v in rate.items()},
            "ratio": round(rate[first] / rate[second], 3),
            "ratio_best_of": round(min(times[second]) / min(times[first]), 3),
            "step_s": {n: [round(t, 5) for t in v] for n, v in times.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="settings for every variant, on top of the small preset (as convnext train --set)")
    ap.add_argument("--variant", action="append", required=True,
                    help='"NAME [KEY=VALUE ...]"; the first is the one the others are compared with')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--budget-s", type=float, default=0, help="stop adding rounds when the next one would end "
                    "past this many seconds since the start (0 = no budget; at least one round runs)")
    ap.add_argument("--sgemm", type=int, default=0, metavar="N",
                    help="also time an N x N x N float32 matrix product each round (0 = not), as the machine's peak")
    ap.add_argument("--out", "-o", default=None, help="JSON path (default: print only)")
    args = ap.parse_args()
    for n, what in ((args.threads, "--threads"), (args.rounds, "--rounds"), (args.steps, "--steps")):
        if n < 1:
            raise UsageExit(f"{what} must be >= 1")
    if args.sgemm < 0:
        raise UsageExit(f"--sgemm {args.sgemm} must be >= 1, or 0 for no matrix product")
    variants = dict(parse_variant(v) for v in args.variant)
    if len(variants) != len(args.variant):
        raise UsageExit("a variant is named twice: name each variant once")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from convnext.train.config import load_config

    steps, params, flops, batch = {}, {}, {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in variants.items():
            try:
                cfg = load_config(preset_name="small", overrides=[*args.set, *settings,
                                                                   "runtime.tensorboard=false", "runtime.plots=false",
                                                                   "runtime.progress=false", "data.workers=0"])
            except UsageError as exc:
                raise UsageExit(f"variant {name}: {exc}") from None
            torch.manual_seed(0)
            steps[name], b, params[name], cycled = variant_step(cfg, f"{tmp}/{name}")
            if batch not in (None, b):
                raise UsageExit(f"variant {name} trains batches of {b}, the others {batch}: compare one batch size")
            batch = b
            for _ in range(args.warmup):
                steps[name]()
            flops[name] = step_flops(steps[name])

        sgemm: list[float] = []

        def measure(name: str) -> float:
            if args.sgemm and name == first:  # once a round, beside the variants
                sgemm.append(sgemm_seconds(args.sgemm))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            return (time.perf_counter() - t0) / args.steps

        times: dict[str, list[float]] = {name: [] for name in variants}
        first = next(iter(variants))
        peak = lambda: 2 * args.sgemm ** 3 / statistics.median(sgemm) / 1e9  # noqa: E731 - GFLOP/s

        def write(rounds_done: int, complete: bool) -> dict:
            rate = {n: batch / statistics.median(t) for n, t in times.items() if t}
            gflops = {n: flops[n] / statistics.median(times[n]) / 1e9 for n in rate}
            best = {n: batch / min(t) for n, t in times.items() if t}
            result = {
                "benchmark": "arch_speed", "preset": "small", "set": args.set, "threads": args.threads,
                "batch": batch, "batches_cycled": cycled, "steps_per_round": args.steps, "rounds": rounds_done,
                "complete": complete,
                "variants": {n: {"settings": variants[n], "params": params[n], "img_per_s": round(rate[n], 1),
                                 "ratio": round(rate[n] / rate[first], 3),
                                 "ratio_best_of": round(best[n] / best[first], 3),
                                 "train_flops_per_img": flops[n] // batch,
                                 "gflop_per_s": round(gflops[n], 2),
                                 **({"of_sgemm": round(gflops[n] / peak(), 3)} if sgemm else {}),
                                 "step_s": [round(t, 5) for t in times[n]]} for n in rate},
                **({"sgemm": {"n": args.sgemm, "gflop_per_s": round(peak(), 2),
                               "seconds": [round(t, 9) for t in sgemm]}} if sgemm else {}),
                "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
                "load_avg": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                            time.gmtime()),
            }
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            return result

        done = timed_rounds(variants, measure, times, rounds=args.rounds, batch=batch, write=write,
                            budget_s=args.budget_s, start=start)
        result = write(done, complete=True)
    for name, v in result["variants"].items():
        print(f"{name:<12} {v['params']:>10,} params  {v['img_per_s']:8.1f} img/s  "
              f"{v['ratio']:.3f}x (best of {v['ratio_best_of']:.3f}x)  {v['gflop_per_s']:6.2f} GFLOP/s"
              + (f" ({v['of_sgemm']:.0%} of sgemm's {result['sgemm']['gflop_per_s']:.1f})" if "sgemm" in result else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
