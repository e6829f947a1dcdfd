"""Does the input pipeline keep the training step fed? The engine's step on Fashion-MNIST at 64 px, img/s, fed by

  loader      the normal path: the engine's train feed (DataLoader workers, pinned memory, copy to the device)
  on_device   the same with ``data.on_device true`` (the split held on the device, batches augmented there);
              skipped, with a note in the JSON, where the config has no such key
  synthetic   the same step on one batch that is already on the device: what the step alone can do

and the ratios loader / synthetic and on_device / synthetic (issue #18's target: >= 0.90). Same process, same
model, same batch size and precision; the variants take turns in rounds (interleaved, so machine noise hits all
alike), ratios are of the median round, "best of" ratios (fastest round of each) next to them.

Measured with the real ``convnext.train.loop.Trainer``: ``Trainer(cfg, DistInfo(device))``, its train feed
(``train_feed``/``train_loader``, iterated epoch after epoch as its epoch loop does) and ``_train_step``, with the
step results read back at the engine's cadence. Each round starts with a few untimed "settle" steps
(2 x workers + 2): while the other variants run, the loader's workers fill their prefetch queue, and without
them a round would start on free, already-made batches.

Model: ``convnext_micro_small_input``, the ``small`` preset's model when this was written (the Fashion-MNIST recipe:
``make demo``; today's is its batch-norm form), with that preset's data settings (batch 128, 2 workers, no
augmentation but a resize; EMA on) and its optimizer then (AdamW at lr 8e-3). It is the smallest registered model
and so the fastest step: the hardest case for a pipeline. If the pipeline keeps up with it, it keeps up with any
larger model at this resolution. --model picks another (e.g. convnext_atto_small_input).

    .venv/bin/python benchmarks/data_pipeline.py --steps 5 --rounds 2 --batch 16 --limit-train 2048
    python benchmarks/data_pipeline.py --device cuda -o benchmarks/results/data_pipeline_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rounds import save, timed_rounds  # noqa: E402
from train_throughput import engine_step, gpu_slug, machine_info, sync  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
TARGET = 0.90  # issue #18: the data pipeline keeps >= 90 % of the synthetic-input throughput


def engine_config(args, tmp: str, name: str):
    from convnext.train import preset

    return preset("small").replace({
        "model.name": args.model, "data.dataset": "fashion_mnist", "data.root": args.root,
        "data.image_size": args.size, "data.batch_size": args.batch, "data.workers": args.workers,
        "data.limit_train": args.limit_train, "data.limit_val": 256, "opt.epochs": 1000,
        "opt.optimizer": "adamw", "opt.lr": 8e-3,  # the preset's optimizer when the results were measured
        "runtime.out": tmp, "runtime.run_name": name, "runtime.amp": args.amp,
        "runtime.channels_last": args.channels_last, "runtime.device": args.device,
        "runtime.tensorboard": False, "runtime.progress": False, "runtime.plots": False,
        "runtime.save_every_steps": 0,
    })


def on_device_config(cfg):
    """``cfg`` with the device input pipeline on, or (None, why) where this engine has no ``data.on_device``.
    The one place to adapt if the option is named or shaped differently."""
    from convnext.errors import UsageError

    try:
        return cfg.replace({"data.on_device": True}), None
    except UsageError as e:
        return None, f"skipped: this engine's config has no data.on_device ({e})"


def engine_feed(trainer):
    """What the engine's epoch loop iterates for training batches: ``train_feed`` if the trainer has one (the
    device feeds), else its ``train_loader``."""
    feed = getattr(trainer, "train_feed", None)
    return feed if feed is not None else trainer.train_loader


def train_batches(trainer):
    """The engine's training batches, epoch after epoch, as ``Trainer._train_epoch`` draws them: the sampler's
    epoch and start set before each ``iter()``, at most ``steps_per_epoch`` batches per epoch."""
    feed, epoch = engine_feed(trainer), 0
    while True:
        trainer.train_sampler.epoch, trainer.train_sampler.start = epoch, 0
        it = iter(feed)
        for _ in range(trainer.steps_per_epoch):
            yield next(it)
        epoch += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="convnext_micro_small_input")
    ap.add_argument("--size", type=int, default=64, help="training resolution (px)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (the small preset's 2)")
    ap.add_argument("--amp", default=None, choices=("none", "bf16"), help="default: bf16 on CUDA, none on the CPU")
    ap.add_argument("--channels-last", action="store_true", help="runtime.channels_last (default off, as the preset)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round per variant (CPU 5, CUDA 50)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (CPU 3, CUDA 8)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first (CPU 2, CUDA 20)")
    ap.add_argument("--settle", type=int, default=None, help="untimed steps at the start of each round "
                    "(default 2 x workers + 2: the prefetched batches a paused loader has ready)")
    ap.add_argument("--limit-train", type=int, default=0, help="use the first N training images (0 = all 60,000)")
    ap.add_argument("--root", default=os.environ.get("FASHION_MNIST_ROOT", DEFAULT_ROOT),
                    help="Fashion-MNIST IDX files (env FASHION_MNIST_ROOT)")
    ap.add_argument("--no-on-device", action="store_true", help="leave out the data.on_device variant")
    ap.add_argument("--budget-s", type=float, default=0, help="stop adding rounds when the next one would end past "
                    "this many seconds since the start (0 = no budget; at least one round runs)")
    ap.add_argument("--out", "-o", default=None,
                    help="JSON path (default: results/data_pipeline_<device>.json)")
    args = ap.parse_args()
    start = time.perf_counter()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    args.amp = args.amp or ("bf16" if cuda else "none")
    args.steps = args.steps or (50 if cuda else 5)
    args.rounds = args.rounds or (8 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    args.out = args.out or str(RESULTS / f"data_pipeline_{gpu_slug(device)}.json")
    settle = args.settle if args.settle is not None else 2 * args.workers + 2
    info = machine_info(device)
    result: dict = {
        "benchmark": "data_pipeline", "dataset": "fashion_mnist", "model": args.model, "resolution": args.size,
        "batch": args.batch, "workers": args.workers, "amp": args.amp, "channels_last": args.channels_last,
        "limit_train": args.limit_train, "steps_per_round": args.steps, "settle_steps_per_round": settle,
        "warmup_steps": args.warmup, "target_ratio": TARGET, "notes": [], **info,
    }

    def write(rounds_done: int, complete: bool) -> dict:
        ips = {k: args.batch / statistics.median(v) for k, v in times.items() if v}
        best = {k: args.batch / min(v) for k, v in times.items() if v}
        result.update(rounds=rounds_done, rounds_planned=args.rounds, complete=complete,
                      img_per_s={k: round(v, 1) for k, v in ips.items()},
                      best_of_img_per_s={k: round(v, 1) for k, v in best.items()},
                      step_seconds={k: [round(t, 5) for t in v] for k, v in times.items()},
                      wall_seconds=round(time.perf_counter() - start, 1),
                      date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if "synthetic" in ips:
            result["ratio_vs_synthetic"] = {k: round(ips[k] / ips["synthetic"], 3) for k in ips if k != "synthetic"}
            result["best_of_ratio_vs_synthetic"] = {k: round(best[k] / best["synthetic"], 3)
                                                    for k in best if k != "synthetic"}
            result["met"] = {k: v >= TARGET for k, v in result["ratio_vs_synthetic"].items()}
        if cuda:
            result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        return save(Path(args.out), result)

    times: dict[str, list[float]] = {}
    if not Path(args.root).is_dir():
        result["notes"].append(f"skipped: no Fashion-MNIST at {args.root} (set FASHION_MNIST_ROOT or --root)")
        print(result["notes"][-1], file=sys.stderr)
        write(0, complete=False)
        return 3

    from convnext.train.distributed import DistInfo
    from convnext.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine_config(args, tmp, "loader")
        trainers = {"loader": Trainer(cfg, DistInfo(device=device))}
        if not args.no_on_device:
            dev_cfg, why = on_device_config(engine_config(args, tmp, "on_device"))
            if dev_cfg is None:
                result["notes"].append(why)
            else:
                trainers["on_device"] = Trainer(dev_cfg, DistInfo(device=device))
        result["feeds"] = {k: type(engine_feed(t)).__name__ for k, t in trainers.items()}
        if "on_device" in trainers and result["feeds"]["on_device"] == result["feeds"]["loader"]:
            result["notes"].append(f"data.on_device is accepted but the trainer feeds the same "
                                   f"{result['feeds']['loader']} as without it: not wired into the Trainer yet")
        sources = {k: train_batches(t) for k, t in trainers.items()}
        steps = {k: engine_step(t) for k, t in trainers.items()}
        # synthetic: the loader trainer's own step on one batch of its own, already on the device
        images, labels = next(sources["loader"])
        fixed = (images.to(device).clone(), labels.to(device).clone())
        sources["synthetic"] = iter(lambda: fixed, None)
        steps["synthetic"] = steps["loader"]
        result["input"] = {"shape": list(fixed[0].shape), "dtype": str(fixed[0].dtype).removeprefix("torch.")}
        print(f"device: {info.get('gpu', info['processor'] or info['machine'])}; model {args.model}, "
              f"{args.size} px, batch {args.batch}, {args.workers} workers, amp {args.amp}; feeds {result['feeds']}",
              file=sys.stderr)

        def run(name: str, n: int) -> None:
            batches, step = sources[name], steps[name]
            for _ in range(n):
                x, y = next(batches)
                step(x, y)

        for name in sources:
            t0 = time.perf_counter()
            run(name, args.warmup)
            sync(device)
            print(f"warmup {name:<10} {time.perf_counter() - t0:6.1f} s", file=sys.stderr)
        def measure(name: str) -> float:
            run(name, settle)
            sync(device)
            t0 = time.perf_counter()
            run(name, args.steps)
            sync(device)
            return (time.perf_counter() - t0) / args.steps

        times.update({k: [] for k in sources})
        rounds_done = timed_rounds(sources, measure, times, rounds=args.rounds, batch=args.batch, write=write,
                                   budget_s=args.budget_s, start=start, width=10)
        # the loader's workers are still running: drop the iterators before the run dirs go
        sources.clear()
        trainers.clear()
    out = write(rounds_done, complete=rounds_done == args.rounds)
    print(json.dumps({k: out[k] for k in ("img_per_s", "ratio_vs_synthetic", "best_of_ratio_vs_synthetic", "met",
                                          "feeds", "notes") if k in out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
