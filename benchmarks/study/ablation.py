"""One ablation of the roadmap study (issue #16, item 4): a roadmap step trained exactly as a study trains it, with
one change to its architecture (or recipe) that tests a stated reason for a result, on the same seeds, budget and
test split, compared with the study's own runs of the unchanged step.

    python benchmarks/study/ablation.py STEP TAG --arch FIELD=VALUE [--arch ...] [--set KEY=VALUE ...]
        [--budget cpu] [--data fashion_mnist] [--seeds 3] [--jobs 2] [--study results/roadmap] [--out benchmarks/results/study/ablations]

--arch changes an ArchConfig field of STEP's network (for example layer_scale_init=1.0, activation=relu; widths
are the budget's, never changed here), --set an engine setting on top of the study's recipe. Each seed is one run of
the training engine in runs/roadmap-ablation/TAG/ with one CPU thread, --jobs at a time; a finished seed's record
(OUT/TAG/seedK.json) is never trained again and an interrupted one resumes from its last checkpoint. OUT/TAG.json
gets the per-seed top-1, mean +- std, and the difference to the study's runs of STEP with its standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from convnext.cli.options import arch_overrides
from convnext.errors import UsageError
from convnext.files import atomic_write_text
from convnext.models.roadmap import roadmap_step
from convnext.study import get_budget, train_config
from convnext.train.config import parse_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared usage module
from usage import UsageExit, run_main  # noqa: E402


def parse_changes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--arch and --set as dicts (values read as YAML, as `convnext train` reads them), refusing in one line an
    unknown step or ArchConfig field before anything trains."""
    try:
        changes = {"arch": arch_overrides(args), "sets": dict(parse_overrides(args.sets))}
    except UsageError as exc:
        raise UsageExit(str(exc)) from None
    try:
        roadmap_step(args.step).config.replace(**changes["arch"])
    except KeyError:
        raise UsageExit(f"unknown roadmap step {args.step!r}") from None
    except (TypeError, ValueError) as exc:
        raise UsageExit(f"--arch: {exc}") from None
    return changes


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train one seed in this process (one thread) and write its record."""
    import torch

    from convnext.train import train

    torch.set_num_threads(1)
    record_path = args.out / args.tag / f"seed{seed}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    budget = get_budget(args.budget)
    cfg = train_config(roadmap_step(args.step), seed, budget, args.data, Path(args.work_dir) / args.tag)
    # the study's scaled widths stay; the ablated fields go on top of them
    cfg = cfg.replace({"model.overrides": {**cfg.model.overrides, **args.changes["arch"]}, **args.changes["sets"]})
    started = time.time()
    summary = train(cfg)
    if summary["stopped_early"] or summary["final_val_top1"] is None:
        raise SystemExit(f"{args.tag} seed {seed}: the run stopped before its final evaluation")
    record = {"step": args.step, "tag": args.tag, "seed": seed, "top1": summary["final_val_top1"],
              "val_count": summary["val_count"], "wall_s": round(time.time() - started, 1),
              "val_top1_per_epoch": [h["val_top1"] for h in summary["history"]]}
    atomic_write_text(record_path, json.dumps(record, indent=2))
    print(f"{args.tag} seed {seed}: top-1 {record['top1']:.2f} ({record['wall_s']:.0f} s)", flush=True)
    return record


def baseline_study(args: argparse.Namespace) -> dict[str, Any] | None:
    """The study folder's results.json, refused when trained under another budget or data; None without one."""
    results = args.study / "results.json"
    if not results.is_file():
        return None
    study = json.loads(results.read_text())
    if study["settings"]["budget"] != get_budget(args.budget).to_dict() or study["settings"]["data"] != args.data:
        raise UsageExit(f"{args.study} was trained under another budget or data than --budget {args.budget} "
                         f"--data {args.data}: its runs are not the ablation's baseline")
    return study


def summarise(args: argparse.Namespace, records: list[dict[str, Any]], study: dict[str, Any] | None) -> dict[str, Any]:
    """The ablation's runs against ``study``'s runs of the unchanged step (baseline_study: same budget and data)."""
    records = sorted(records, key=lambda r: r["seed"])
    top1 = [r["top1"] for r in records]
    mean, std = statistics.fmean(top1), statistics.stdev(top1) if len(top1) > 1 else 0.0
    out: dict[str, Any] = {
        "step": args.step, "tag": args.tag, **args.changes,
        "data": args.data, "budget_name": args.budget, "budget": get_budget(args.budget).to_dict(),
        "command": "python benchmarks/study/ablation.py " + " ".join(sys.argv[1:]),
        "seeds": [r["seed"] for r in records], "top1": top1,
        "top1_mean": round(mean, 2), "top1_std": round(std, 2), "wall_s": [r["wall_s"] for r in records],
    }
    if study:
        row = next((r for r in study["steps"] if r["name"] == args.step), None)
        if row and row["top1"]:
            base_mean, base_std = row["top1_mean"], row["top1_std"]
            se = math.sqrt(base_std ** 2 / len(row["top1"]) + std ** 2 / len(top1))
            out["study"] = {"folder": str(args.study), "seeds": row["seeds"], "top1": row["top1"],
                            "top1_mean": round(base_mean, 2), "top1_std": round(base_std, 2)}
            out["delta_vs_study"] = round(mean - base_mean, 2)
            out["delta_se"] = round(se, 2)
            out["beyond_two_se"] = abs(mean - base_mean) > 2 * se
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step")
    p.add_argument("tag")
    p.add_argument("--arch", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budget", default="cpu")
    p.add_argument("--data", default="fashion_mnist", help="the study's data (synthetic: for trying the command)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--study", type=Path, default=Path("results/roadmap"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/study/ablations"))
    p.add_argument("--work-dir", default="runs/roadmap-ablation")
    args = p.parse_args()
    if not args.arch and not args.sets:
        raise UsageExit("an ablation changes something: give --arch FIELD=VALUE or --set KEY=VALUE")
    args.changes = parse_changes(args)
    study = baseline_study(args)  # a baseline from another budget is refused before anything trains
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(run_seed, [args] * args.seeds, range(args.seeds)))
    summary = summarise(args, records, study)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.tag}.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary.get(k) for k in ("tag", "top1", "top1_mean", "top1_std", "delta_vs_study",
                                                    "delta_se", "beyond_two_se")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
