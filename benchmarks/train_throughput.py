"""Training throughput (img/s) of our ConvNeXt training step vs plain timm loops, on the CPU or one GPU.

Same process, same device, same batch (random images, already on the device), same precision (fp32 unless
--amp bf16), same stochastic depth (--drop-path, 0.1), same optimizer hyper-parameters (AdamW, lr 4e-3, betas
(0.9, 0.999), eps 1e-8, weight decay 0.05; ours with its no-decay groups). "Ours" is the engine's real optimizer
step (``Trainer._train_step``): forward, loss, backward, gradient-norm NaN/Inf guard, AdamW, lr schedule, and
reading its step results back at the engine's own cadence; EMA and Mixup off so both do the same work.

Loops, timed in alternating rounds so machine noise hits all alike:
  ours, ours_channels_last          the engine, NCHW / runtime.channels_last
  timm                              a plain loop: timm model, default torch.optim.AdamW, NCHW
  timm_channels_last, timm_fused_adamw, timm_fused_adamw_channels_last
                                    the same loop with each speed setting a timm user could turn on;
                                    "timm_best" in the result is the fastest of them. On CUDA every timm loop
                                    runs with cudnn.benchmark on, as timm's train.py sets it; ours keeps
                                    whatever the engine sets (recorded as "cudnn_benchmark").
  NAME_compiled                     the same loop with torch.compile on the model (ours: runtime.compile true;
                                    timm: torch.compile(model), as timm's train.py --torchcompile does)
  --ablation adds ours_stock_dwconv: the engine with PyTorch's own depthwise-conv backward (CPU).

--compile off (default): the eager loops. on: ours_channels_last and timm_fused_adamw_channels_last, compiled.
both: those two eager and compiled, interleaved in the same rounds, so the result holds the eager and the
compiled comparison side by side ("groups") and what compiling gives each ("compiled_vs_eager"). --loops picks
any set by name. Ratios are of medians; the ratios of the fastest step of each loop ("best of", which
interference can only slow) are reported next to them. On CUDA every round is bracketed by
torch.cuda.synchronize(), and the warmup (which includes compiling) is timed apart.

The CPU is shared and noisy (single steps move by +-15 %), so its default is many short rounds (15 rounds of
1 step); on CUDA 10 rounds of 5 steps. --budget-s stops adding rounds when the next would pass the budget
(the JSON is rewritten after every round, so a run killed by a timeout still leaves its rounds so far).

    .venv/bin/python benchmarks/train_throughput.py --batch 8 --ablation
    python benchmarks/train_throughput.py --device cuda --amp bf16 --batch 128 --compile both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # also when imported (data_pipeline.py imports this file)
from rounds import save, timed_rounds  # noqa: E402
from usage import UsageExit, run_main  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TIMM_LOOPS = ("timm", "timm_channels_last", "timm_fused_adamw", "timm_fused_adamw_channels_last")
OURS_LOOPS = ("ours", "ours_channels_last", "ours_stock_dwconv")
DEFAULT_LOOPS = ("ours", "ours_channels_last") + TIMM_LOOPS
COMPILE_PAIR = ("ours_channels_last", "timm_fused_adamw_channels_last")  # each side's fastest eager settings
# Issue #18, one GPU, bf16, batch 128, 224 px, ConvNeXt-T, drop path 0.1: ours / fastest timm loop.
TARGETS = {"eager": 1.10, "compiled": 1.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: the JSON says the machine."""
    import timm

    info = {"device": device.type, "torch": torch.__version__, "timm": timm.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_sms=props.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def gpu_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def engine_step(trainer):
    """One optimizer step of the engine, as its epoch loop runs it: ``_train_step`` on one micro-batch, then the
    step results read back every ``read_every`` steps where the engine keeps them on the device (the engine
    reads after every step on the CPU; an engine whose ``_train_step`` reads them itself has no ``read_every``)."""
    every = getattr(trainer, "read_every", None)
    read = getattr(trainer, "_read_tally", None)
    count = [0]

    def step(x, y):
        trainer._train_step([(x, y)])
        count[0] += 1
        trainer.step = getattr(trainer, "step", 0) + 1
        if every and read is not None and count[0] % every == 0:
            read()

    return step


def ours_step_fn(batch: int, amp: str, channels_last: bool, out: str, drop_path: float, *,
                 device: torch.device = torch.device("cpu"), model: str = "convnext_tiny", size: int = 224,
                 compile: bool = False, backend: str = "inductor", stock_dwconv: bool = False):
    from convnext.train import preset
    from convnext.train.distributed import DistInfo
    from convnext.train.loop import Trainer

    cfg = preset("paper").replace({
        "model.name": model, "data.dataset": "synthetic", "data.synthetic_samples": batch,
        "data.synthetic_classes": 1000, "data.batch_size": batch, "data.workers": 0, "data.image_size": size,
        "aug.mixup": 0.0, "aug.cutmix": 0.0, "aug.label_smoothing": 0.0, "reg.ema": False,
        "opt.lr_base_batch": None, "opt.epochs": 1, "opt.warmup_epochs": 0.0,
        "runtime.out": out, "runtime.amp": amp, "runtime.channels_last": channels_last,
        "runtime.tensorboard": False, "runtime.progress": False, "runtime.plots": False, "reg.drop_path": drop_path,
        "runtime.device": str(device), "runtime.compile": compile,
    })
    trainer = Trainer(cfg, DistInfo(device=device))
    trainer.train_net.train()
    if compile and backend != "inductor":  # a cheap backend for CPU dry runs; compiled lazily, so nothing is lost
        trainer.train_net = torch.compile(getattr(trainer.train_net, "_orig_mod", trainer.train_net), backend=backend)
    if stock_dwconv:
        from convnext.train.accelerate import DepthwiseConv2d

        for m in trainer.model.modules():
            if isinstance(m, DepthwiseConv2d):
                m.forward = types.MethodType(torch.nn.Conv2d.forward, m)
    cudnn_benchmark = torch.backends.cudnn.benchmark  # whatever the engine set (it does not set it today)
    run = engine_step(trainer)

    def step(x, y):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        run(x, y)

    step.cudnn_benchmark = cudnn_benchmark
    return step


def timm_step_fn(amp: str, drop_path: float, channels_last: bool = False, fused: bool = False, *,
                 device: torch.device = torch.device("cpu"), model: str = "convnext_tiny", compile: bool = False,
                 backend: str = "inductor"):
    import timm

    net = timm.create_model(model, num_classes=1000, drop_path_rate=drop_path).to(device)
    net.train()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=4e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                            fused=fused or None)
    fwd = torch.compile(net, backend=backend) if compile else net
    cudnn_benchmark = device.type == "cuda"  # timm's train.py turns it on for the whole process

    def step(x, y):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.cudnn_benchmark = cudnn_benchmark
    return step


def build_loop(name: str, args, device: torch.device, tmp: str):
    compiled = name.endswith("_compiled")
    base = name.removesuffix("_compiled")
    common = dict(device=device, model=args.model, compile=compiled, backend=args.compile_backend)
    if base in OURS_LOOPS:
        return ours_step_fn(args.batch, args.amp, "channels_last" in base, f"{tmp}/{name}", args.drop_path,
                            size=args.size, stock_dwconv=base == "ours_stock_dwconv", **common)
    if base in TIMM_LOOPS:
        return timm_step_fn(args.amp, args.drop_path, channels_last="channels_last" in base,
                            fused="fused" in base, **common)
    raise UsageExit(f"unknown loop {name!r}; loops: {', '.join(OURS_LOOPS + TIMM_LOOPS)}, each with an optional "
                     "_compiled suffix")


def pick_loops(args) -> list[str]:
    if args.loops:
        return [n.strip() for n in args.loops.split(",") if n.strip()]
    if args.compile == "off":
        loops = list(DEFAULT_LOOPS)
    elif args.compile == "on":
        loops = [n + "_compiled" for n in COMPILE_PAIR]
    else:
        loops = list(COMPILE_PAIR) + [n + "_compiled" for n in COMPILE_PAIR]
    if args.ablation:
        loops.append("ours_stock_dwconv")
    return loops


def dynamo_counts() -> tuple[int, int, list[str]]:
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    return counters["stats"]["unique_graphs"], sum(breaks.values()), list(breaks)


def summarize(times: dict[str, list[float]], batch: int) -> dict:
    """Medians, best-of and the ratios, per group (eager / compiled loops compared among themselves)."""
    ips = {k: batch / statistics.median(v) for k, v in times.items() if v}
    best = {k: batch / min(v) for k, v in times.items() if v}  # "best of": each loop's fastest step

    def group(names: list[str], suffix: str) -> dict | None:
        timm = [k for k in names if k.startswith("timm")]
        if not timm:
            return None
        plain = "timm" + suffix

        def ratios(rate: dict[str, float]) -> tuple[str, dict, dict]:
            fastest = max(timm, key=rate.get)
            vs_plain = ({k: round(rate[k] / rate[plain], 3) for k in names if k != plain} if plain in rate else {})
            return fastest, vs_plain, {k: round(rate[k] / rate[fastest], 3) for k in names if k.startswith("ours")}

        fastest, vs_plain, vs_fastest = ratios(ips)
        _, best_vs_plain, best_vs_fastest = ratios(best)
        return {"img_per_s": {k: round(ips[k], 3) for k in names}, "ratio_vs_timm": vs_plain, "timm_best": fastest,
                "ratio_vs_timm_best": vs_fastest,
                "best_of_img_per_s": {k: round(best[k], 3) for k in names},
                "best_of_ratio_vs_timm": {k: v for k, v in best_vs_plain.items() if k.startswith("ours")},
                "best_of_ratio_vs_timm_best": best_vs_fastest}

    groups = {}
    eager = [k for k in ips if not k.endswith("_compiled")]
    compiled = [k for k in ips if k.endswith("_compiled")]
    for label, names, suffix in (("eager", eager, ""), ("compiled", compiled, "_compiled")):
        g = group(names, suffix) if names else None
        if g is not None:
            groups[label] = g
    compiled_vs_eager = {k: round(ips[k] / ips[k.removesuffix("_compiled")], 3)
                         for k in compiled if k.removesuffix("_compiled") in ips}
    return {"ips": ips, "best": best, "groups": groups, "compiled_vs_eager": compiled_vs_eager}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="convnext_tiny", help="a name both timm and this project register")
    ap.add_argument("--size", type=int, default=224, help="input resolution (px)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round per loop (CPU 1, CUDA 5)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (CPU 15, CUDA 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per loop first (CPU 2, CUDA 3)")
    ap.add_argument("--amp", default="none", choices=("none", "bf16"))
    ap.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of both models "
                    "(0.1: the paper's ConvNeXt-T recipe)")
    ap.add_argument("--compile", default="off", choices=("off", "on", "both"),
                    help="torch.compile the models: off, on (compiled pair only), both (eager and compiled pair)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend for both sides (inductor; aot_eager for quick CPU dry runs)")
    ap.add_argument("--loops", default="", help="comma-separated loop names (overrides --compile's choice)")
    ap.add_argument("--ablation", action="store_true", help="add ours with PyTorch's stock depthwise backward")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--budget-s", type=float, default=0, help="stop adding rounds when the next one would end "
                    "past this many seconds since the start (0 = no budget; at least one round runs)")
    ap.add_argument("--out", "-o", default=None, help="JSON path (default: results/train_throughput.json on the "
                    "CPU, results/train_throughput_<gpu>_<amp>[_compiled].json on CUDA)")
    args = ap.parse_args()
    start = time.perf_counter()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    args.steps = args.steps or (5 if cuda else 1)
    args.rounds = args.rounds or (10 if cuda else 15)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:
        if cuda:
            name = f"train_throughput_{gpu_slug(device)}_{args.amp}{'' if args.compile == 'off' else '_compiled'}"
            args.out = str(RESULTS / f"{name}.json")
        else:
            args.out = str(RESULTS / "train_throughput.json")
    loops_wanted = pick_loops(args)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    info = machine_info(device)
    print(f"device: {info.get('gpu', info['processor'] or info['machine'])}, torch {info['torch']}, "
          f"timm {info['timm']}; loops: {', '.join(loops_wanted)}", file=sys.stderr)

    warmup_s: dict[str, float] = {}
    dynamo: dict[str, dict] = {}
    failed: dict[str, str] = {}
    cudnn_benchmark: dict[str, bool] = {}
    times: dict[str, list[float]] = {}
    load_before = os.getloadavg()

    def write(rounds_done: int, complete: bool) -> dict:
        s = summarize(times, args.batch)
        first = s["groups"].get("eager") or s["groups"].get("compiled") or {}
        result = {
            "benchmark": "train_throughput", "model": args.model, "resolution": args.size, "batch": args.batch,
            "drop_path": args.drop_path, "amp": args.amp, "device": args.device, "compile": args.compile,
            "compile_backend": args.compile_backend if any(k.endswith("_compiled") for k in loops_wanted) else None,
            "threads": torch.get_num_threads(), "steps_per_round": args.steps, "rounds": rounds_done,
            "rounds_planned": args.rounds, "warmup_steps": args.warmup, "complete": complete,
            "img_per_s": {k: round(v, 3) for k, v in s["ips"].items()},
            # the first group's comparison at the top level, as in the CPU results before --device/--compile
            "ratio_vs_timm": first.get("ratio_vs_timm", {}),
            "timm_best": first.get("timm_best"),
            "ratio_vs_timm_best": first.get("ratio_vs_timm_best", {}),
            "best_of_img_per_s": {k: round(v, 3) for k, v in s["best"].items()},
            "best_of_ratio_vs_timm": first.get("best_of_ratio_vs_timm", {}),
            "best_of_ratio_vs_timm_best": first.get("best_of_ratio_vs_timm_best", {}),
            "groups": s["groups"], "compiled_vs_eager": s["compiled_vs_eager"],
            "step_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "warmup_seconds": {k: round(v, 2) for k, v in warmup_s.items()},
            "dynamo": dynamo, "failed": failed, "cudnn_benchmark": cudnn_benchmark,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            **info, "wall_seconds": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if cuda:
            targets = {}
            for label, target in TARGETS.items():
                g = s["groups"].get(label)
                key = "ours_channels_last" + ("_compiled" if label == "compiled" else "")
                if g and key in g["ratio_vs_timm_best"]:
                    r = g["ratio_vs_timm_best"][key]
                    targets[label] = {"ours": key, "vs": g["timm_best"], "ratio_of_medians": r,
                                      "ratio_best_of": g["best_of_ratio_vs_timm_best"][key], "target": target,
                                      "met": r >= target}
            result["targets"] = targets
            result["issue_config"] = (args.model == "convnext_tiny" and args.size == 224 and args.batch == 128
                                      and args.amp == "bf16" and args.drop_path == 0.1)
            result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        return save(Path(args.out), result)

    with tempfile.TemporaryDirectory() as tmp:
        loops = {}
        for name in loops_wanted:
            try:
                loops[name] = build_loop(name, args, device, tmp)
            except SystemExit:
                raise
            except Exception as e:  # noqa: BLE001 - one loop's failure (e.g. a compile error) must not lose the rest
                failed[name] = f"build: {type(e).__name__}: {e}"[:500]
                print(f"{name}: build failed: {failed[name]}", file=sys.stderr)
        for name, step in list(loops.items()):
            cudnn_benchmark[name] = step.cudnn_benchmark
            graphs0, breaks0, _ = dynamo_counts()
            t0 = time.perf_counter()
            try:
                for _ in range(args.warmup):
                    step(x, y)
                sync(device)
            except Exception as e:  # noqa: BLE001
                failed[name] = f"warmup: {type(e).__name__}: {e}"[:500]
                print(f"{name}: warmup failed: {failed[name]}", file=sys.stderr)
                del loops[name]
                continue
            warmup_s[name] = time.perf_counter() - t0
            if name.endswith("_compiled"):
                graphs1, breaks1, reasons = dynamo_counts()
                dynamo[name] = {"graphs": graphs1 - graphs0, "graph_breaks": breaks1 - breaks0,
                                "break_reasons": [r.splitlines()[0][:160] for r in reasons][:10]}
            print(f"warmup {name:<40} {warmup_s[name]:7.1f} s", file=sys.stderr)
            write(0, complete=False)  # a run killed while compiling still says which warmups finished, and how long
        def measure(name: str) -> float:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loops[name](x, y)
            sync(device)
            return (time.perf_counter() - t0) / args.steps

        times.update({k: [] for k in loops})
        rounds_done = timed_rounds(loops, measure, times, rounds=args.rounds, batch=args.batch, write=write,
                                   budget_s=args.budget_s, start=start)
    result = write(rounds_done, complete=rounds_done == args.rounds and not failed)
    print(json.dumps(result, indent=2))
    return 0 if loops and not failed else 1


if __name__ == "__main__":
    raise SystemExit(run_main(main))
