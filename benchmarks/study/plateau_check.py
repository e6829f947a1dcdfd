"""Issue #16's plateau check: is a study's budget at the plateau? Compares the steps a study trained at its budget
(STUDY, a `convnext study roadmap --out` folder) with the same steps trained at twice the epochs (DOUBLE, another
study's folder, e.g. `--epochs 2E --steps resnet50,roadmap_separate_downsampling`), seed by seed, and writes one JSON:
the study's progress and wall time, each step's top-1 at both budgets and the gain the doubled budget bought.

    python benchmarks/study/plateau_check.py STUDY DOUBLE OUT.json [--tolerance 0.3]

A step is at its plateau when doubling the budget gains at most TOLERANCE points (the issue's ~0.3), judged on the
mean over the seeds both folders hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared usage module
from usage import UsageExit, run_main  # noqa: E402


def load(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise UsageExit(f"{folder}: no results.json (has the study written its first run?)")
    return json.loads(path.read_text())


def by_seed(row: dict) -> dict[int, float]:
    return dict(zip(row["seeds"], row["top1"]))


def check(study: dict, double: dict, tolerance: float) -> dict:
    budget, budget_2x = study["settings"]["budget"], double["settings"]["budget"]
    same = {k: v for k, v in budget.items() if k != "epochs"}
    if same != {k: v for k, v in budget_2x.items() if k != "epochs"} or budget_2x["epochs"] != 2 * budget["epochs"]:
        raise UsageExit("the second study is not the first at twice the epochs: "
                         f"{budget} vs {budget_2x}; run it with --epochs {2 * budget['epochs']} and nothing else "
                         "changed")
    rows = {r["name"]: r for r in study["steps"]}
    steps = {}
    for row in double["steps"]:
        base, doubled = by_seed(rows.get(row["name"], {"seeds": [], "top1": []})), by_seed(row)
        seeds = sorted(set(base) & set(doubled))
        if not seeds:
            steps[row["name"]] = {"seeds": [], "note": "not finished at both budgets"}
            continue
        mean = lambda d: sum(d[s] for s in seeds) / len(seeds)  # noqa: E731
        gain = mean(doubled) - mean(base)
        steps[row["name"]] = {"seeds": seeds, "top1": round(mean(base), 2), "top1_2x": round(mean(doubled), 2),
                              "gain_2x": round(gain, 2), "at_plateau": gain <= tolerance}
    return {"check": "plateau: the same steps at twice the epochs", "tolerance": tolerance,
            "epochs": budget["epochs"], "epochs_2x": budget_2x["epochs"], "command": study["command"],
            "command_2x": double["command"], "study_complete": study["complete"],
            "runs_done": study["runs_done"], "runs_planned": study["runs_planned"],
            "wall_time_s": study["wall_time_s"], "wall_time_2x_s": double["wall_time_s"],
            "top1": {r["name"]: r["top1_mean"] for r in study["steps"]}, "steps": steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path)
    p.add_argument("double", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tolerance", type=float, default=0.3, help="points the doubled budget may gain at a plateau")
    args = p.parse_args()
    result = check(load(args.study), load(args.double), args.tolerance)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["steps"].items():
        print(f"{name:32s} " + (f"{s['top1']:6.2f} -> {s['top1_2x']:6.2f} at 2x ({s['gain_2x']:+.2f}): "
                                f"{'at' if s['at_plateau'] else 'NOT at'} its plateau" if s["seeds"] else s["note"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
