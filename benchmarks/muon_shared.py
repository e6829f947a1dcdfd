"""Muon's distributed form on the CPU: two processes of one thread (torchrun, gloo) that each orthogonalise a share
of the matrices and exchange the results (``--opt.muon_distributed true``, the default), against both doing all of
them (false). The two give the same weights bit for bit (tests/test_muon.py); this times what sharing saves on the
real engine, the 30-minute recipe's network at its batch (64 a process), in interleaved rounds.

    python benchmarks/muon_shared.py --rounds 4 --out benchmarks/results/recipes/muon_shared.json

Speed is the engine's own step records (global img/s), after the first window, as in cpu_processes.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_processes import command, measure  # noqa: E402
from rounds import rates, save, timed_rounds  # noqa: E402
from usage import UsageExit, run_main  # noqa: E402

MUON = ("--opt.optimizer", "muon", "--opt.lr", "8e-3")
WAYS = {"shared": (*MUON, "--opt.muon_distributed", "true"), "every": (*MUON, "--opt.muon_distributed", "false")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="global batch (64 a process)")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per timed run")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=0, help="stop starting rounds after this long (0: none)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if min(args.batch, args.steps, args.log_every, args.rounds) < 1 or args.batch % 2:
        raise UsageExit("--batch (even: two processes), --steps, --log-every and --rounds must be at least 1")
    args.cores = 2
    times: dict[str, list[float]] = {n: [] for n in WAYS}
    start = time.perf_counter()

    def run(name: str, out: Path) -> float:
        args.extra = WAYS[name]
        return measure("processes", args, out / name)

    def write(rounds_done: int, complete: bool) -> dict:
        img_s, median = rates(times, args.batch)
        result = {"benchmark": "muon_shared", "processes": 2, "global_batch": args.batch, "steps": args.steps,
                  "rounds": rounds_done, "complete": complete, "img_per_s": img_s, "median_img_per_s": median,
                  "ratio_shared_vs_every": round(median["shared"] / median["every"], 3) if len(median) == 2 else None,
                  "date": time.strftime("%Y-%m-%d"),
                  "commands": {n: " ".join(command("processes", 2, args.batch, args.steps, Path("OUT"),
                                                   args.log_every, WAYS[n])).replace(sys.executable, "python")
                               for n in WAYS}}
        return save(args.out, result)

    with tempfile.TemporaryDirectory() as tmp:
        done = timed_rounds(WAYS, lambda n: run(n, Path(tmp)), times, rounds=args.rounds, batch=args.batch,
                            write=write, budget_s=args.budget_s, start=start, width=10)
    result = write(done, complete=done == args.rounds)
    print(json.dumps({k: result[k] for k in ("median_img_per_s", "ratio_shared_vs_every")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
