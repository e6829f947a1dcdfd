"""One training process with N threads, or N processes of one thread each (torchrun, gloo), on the CPU.

A small network's convolutions do not split well over threads: on the 2-core machine the 30-minute recipe's
network trained at ~720 img/s with 2 threads, and at about as much with one thread while a second run used the
other core. This times the real engine (`convnext train` on Fashion-MNIST, the same global batch either way)
both ways, in interleaved rounds, and reports the median speed of each and their ratio.

    python benchmarks/cpu_processes.py --rounds 3 --out benchmarks/results/cpu_processes.json

Speed is the engine's own step records (global img/s, every rank's images counted), after the first window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import rates, save, timed_rounds  # noqa: E402

FASHION = os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist")
# the 30-minute recipe's network (docs/recipes.md section 5) and the preset's loader settings, with the optimizer
# its results were measured with (AdamW; the preset's Muon came later, docs/recipes.md 4c)
MODEL = ["--preset", "small", "--opt.optimizer", "adamw", "--opt.lr", "8e-3", "--model.name",
         "convnext_micro_bn_small_input", "--set", "model.overrides.dims=[48,96,192]", "--aug.crop_padding", "2",
         "--aug.hflip", "0.5"]


def command(kind: str, cores: int, batch: int, steps: int, out: Path, log_every: int,
            extra: tuple[str, ...] = ()) -> list[str]:
    per_process = batch // cores if kind == "processes" else batch
    train = ["-m", "convnext", "train", *MODEL, "--data.dataset", "fashion_mnist", "--data.root", FASHION,
             "--data.workers", "0", "--data.batch_size", str(per_process),
             "--data.limit_train", str(steps * batch), "--data.limit_val", "500", "--opt.epochs", "1",
             "--runtime.threads", "1" if kind == "processes" else str(cores), "--runtime.log_every", str(log_every),
             "--runtime.save_every_steps", "0", "--runtime.progress", "false", "--runtime.plots", "false",
             "--runtime.tensorboard", "false", "--runtime.out", str(out), "--runtime.run_name", kind,
             "--runtime.overwrite", "true", *extra]
    if kind == "processes":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cores), *train]
    return [sys.executable, *train]


def measure(kind: str, args, out: Path) -> float:
    """Seconds per global step of one training run, from its step records after the first window."""
    cmd = command(kind, args.cores, args.batch, args.steps, out, args.log_every, args.extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1" if kind == "processes" else str(args.cores)}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    records = [json.loads(line) for line in (out / kind / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["img_per_s"] for r in records if r["type"] == "step"][1:]
    return args.batch / statistics.median(speeds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2, help="threads of the one process, or processes of one thread")
    p.add_argument("--batch", type=int, default=128, help="global batch (split over the processes)")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per timed run")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=0, help="stop starting rounds after this long (0: none)")
    p.add_argument("--extra", default="", help='more train flags for both ways, e.g. "--runtime.amp bf16"')
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.extra = tuple(args.extra.split())
    names = ["threads", "processes"]
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()

    def write(rounds_done: int, complete: bool) -> dict:
        img_s, median = rates(times, args.batch)
        result = {"benchmark": "cpu_processes", "cores": args.cores, "global_batch": args.batch, "steps": args.steps,
                  "model": " ".join(MODEL), "rounds": rounds_done, "complete": complete, "img_per_s": img_s,
                  "median_img_per_s": median,
                  "ratio_processes_vs_threads": (round(median["processes"] / median["threads"], 3)
                                                 if len(median) == 2 else None),
                  "date": time.strftime("%Y-%m-%d"),
                  "commands": {n: " ".join(command(n, args.cores, args.batch, args.steps, Path("OUT"),
                                                   args.log_every, args.extra)).replace(sys.executable, "python")
                               for n in names}}
        return save(args.out, result)

    with tempfile.TemporaryDirectory() as tmp:
        done = timed_rounds(names, lambda n: measure(n, args, Path(tmp)), times, rounds=args.rounds,
                            batch=args.batch, write=write, budget_s=args.budget_s, start=start, width=10)
    result = write(done, complete=done == args.rounds)
    print(json.dumps({k: result[k] for k in ("median_img_per_s", "ratio_processes_vs_threads")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
