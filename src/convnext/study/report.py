"""The study's outputs: results.json (per step: size, compute, top-1 per seed, mean +- std, paper top-1),
results.md (the table) and roadmap.png (paper Fig. 2 next to ours), from the per-run records; curves.json and
curves.png (every run's top-1 after each pass), from the engine's metrics of the runs in the work dir."""

from __future__ import annotations

import functools
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from ..models.convnext import ConvNeXt
from ..models.flops import count_flops, count_params
from ..models.roadmap import ROADMAP, RoadmapStep, roadmap_step
from .plan import StudyPlan, study_settings
from .recipe import data_channels, run_name
from .scaling import scale_config

RESULTS_JSON, RESULTS_MD, FIGURE = "results.json", "results.md", "roadmap.png"
CURVES_JSON, CURVES_FIGURE = "curves.json", "curves.png"


def parent_step(index: int) -> RoadmapStep | None:
    """The step ``ROADMAP[index]`` changes, as the roadmap names it (``RoadmapStep.parent``): every kernel
    size branches off the kernel-3 move-up step, and GELU continues from kernel 7, the one the paper
    keeps. None for ResNet-50."""
    parent = ROADMAP[index].parent
    return None if parent is None else roadmap_step(parent)


@functools.lru_cache(maxsize=None)
def _measure(cfg, in_chans: int, size: int) -> tuple[int, float]:
    # cached: counting the full-size networks at 224 takes seconds, and the outputs are rewritten after every run
    with torch.device("meta"):  # shapes only: counting takes milliseconds
        model = ConvNeXt(cfg.replace(in_chans=in_chans))
    return count_params(model), count_flops(model, (in_chans, size, size))


def wall_time(events: list[dict[str, Any]]) -> float:
    """Seconds the study's invocations that trained something ran, summed (a killed invocation counts
    until its last event; a rerun that only rewrites the outputs counts nothing)."""
    sessions: list[list[dict[str, Any]]] = []
    for e in events:
        if e.get("event") == "study_start" or not sessions:
            sessions.append([])
        sessions[-1].append(e)
    return sum(s[-1]["time"] - s[0]["time"] for s in sessions if any(e.get("event") == "run_start" for e in s))


def _summary(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def build_results(plan: StudyPlan, records: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    in_chans, size = data_channels(plan.data), plan.budget.image_size
    by_step: dict[str, list[dict]] = {}
    for r in records:
        by_step.setdefault(r["step"], []).append(r)
    wanted = {s.name for s in plan.steps} | set(by_step)
    steps, summaries = [], {}
    for step in ROADMAP:
        if step.name not in wanted:
            continue
        scaled = scale_config(step.config, plan.budget.width_mult).replace(num_classes=10)
        params, gmacs = _measure(scaled, in_chans, size)
        _, gmacs_224 = _measure(scaled, in_chans, 224)
        full_params, full_gmacs = _measure(step.config, 3, 224)
        runs = sorted(by_step.get(step.name, []), key=lambda r: r["seed"])
        top1 = [r["top1"] for r in runs]
        mean, std = _summary(top1)
        summaries[step.name] = (mean, std, len(top1))
        parent = None if step.parent is None else roadmap_step(step.parent)
        row = {
            "name": step.name, "change": step.change, "recipe": step.recipe,
            "params": params, "gmacs": round(gmacs, 5), "gmacs_224": round(gmacs_224, 4),
            "full_params": full_params, "full_gmacs_224": round(full_gmacs, 4),
            "paper_gflops": step.paper_gflops, "paper_top1": step.paper_top1,
            "paper_top1_approx": step.paper_top1_approx,
            "seeds": [r["seed"] for r in runs], "top1": top1, "top1_mean": mean, "top1_std": std,
            "parent": parent.name if parent else None,
            "delta_paper": round(step.paper_top1 - parent.paper_top1, 2) if parent else None,
            "delta": None, "delta_noise": None, "same_direction": None,
        }
        if parent is not None and parent.name in summaries and mean is not None:
            p_mean, p_std, p_n = summaries[parent.name]
            if p_mean is not None:
                row["delta"] = mean - p_mean
                if len(top1) > 1 and p_n > 1:
                    # standard error of a difference of two means: how large a delta the seeds alone produce
                    row["delta_noise"] = math.sqrt(std ** 2 / len(top1) + p_std ** 2 / p_n)
                if row["delta_paper"] != 0:
                    row["same_direction"] = (row["delta"] > 0) == (row["delta_paper"] > 0)
        steps.append(row)
    planned = len(plan.steps) * len(plan.seeds)
    done = sum(1 for r in records if r["seed"] in plan.seeds and r["step"] in {s.name for s in plan.steps})
    return {
        "study": "roadmap", "command": plan.command, "settings": study_settings(plan.budget, plan.data),
        "image_size": size, "in_chans": in_chans, "num_classes": 10,
        "runs_planned": planned, "runs_done": done, "complete": done >= planned,
        "wall_time_s": round(wall_time(events), 1), "steps": steps,
    }


def _fmt(v: float | None, spec: str, sign: bool = False) -> str:
    if v is None:
        return "–"
    return format(v, ("+" if sign else "") + spec)


def format_markdown(results: dict[str, Any]) -> str:
    size = results["image_size"]
    head = ["step", "what changed", "recipe", "params", f"GMACs@{size}", "GMACs@224",
            "top-1 ours (mean ± std, n)", "Δ ours vs parent", "Δ paper", "same direction", "top-1 paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["steps"]:
        ours = "–" if r["top1_mean"] is None else f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} ({len(r['top1'])})"
        if r["delta"] is None:
            delta, same = "–", "–"
        else:
            noise = r["delta_noise"]
            delta = f"{r['delta']:+.2f}" + (f" (± {noise:.2f})" if noise is not None else " (1 seed)")
            if r["same_direction"] is None:
                same = "paper ±0"
            else:
                same = "yes" if r["same_direction"] else "no"
            if noise is not None and abs(r["delta"]) < 2 * noise:
                same += " (within noise)"
        paper = ("~" if r["paper_top1_approx"] else "") + f"{r['paper_top1']:.1f}"
        lines.append("| " + " | ".join([
            r["name"], r["change"], r["recipe"], f"{r['params']:,}", f"{r['gmacs']:.4f}", f"{r['gmacs_224']:.3f}",
            ours, delta, _fmt(r["delta_paper"], ".1f", sign=True) if r["parent"] else "–", same, paper,
        ]) + " |")
    done = f"{results['runs_done']}/{results['runs_planned']} runs"
    notes = [
        "",
        f"Fashion-MNIST test-split top-1 (%) after the budget; {done}; study wall time "
        f"{results['wall_time_s'] / 60:.1f} min. std is the sample std over seeds; the ± after Δ is the "
        "standard error of the difference of the two means, and \"within noise\" marks |Δ| < 2 standard errors. Parent = the step this one changes (kernels 5, 7, 9 "
        "and 11 each branch off the kernel-3 move-up step, GELU continues from kernel 7). Params and GMACs are the scaled networks "
        f"({results['in_chans']}-channel input, {results['num_classes']} classes); paper top-1 is ImageNet-1K.",
    ]
    return "\n".join(lines + notes) + "\n"


def read_curves(plan: StudyPlan) -> dict[str, dict[str, list[float]]]:
    """Every run's top-1 after each pass, {step: {seed: [top-1, ...]}}, in roadmap order.

    Read from each run's metrics.jsonl in the work dir (an epoch logged twice around a crash counts once, the later
    line); a run whose directory is gone (a fresh clone of the committed study) keeps what curves.json holds."""
    from ..plots import METRICS_FILE, read_metrics

    path = Path(plan.out) / CURVES_JSON
    kept = json.loads(path.read_text()) if path.is_file() else {}
    curves: dict[str, dict[str, list[float]]] = {}
    for step in plan.steps:
        for seed in plan.seeds:
            metrics = Path(plan.work_dir) / run_name(step.name, seed) / METRICS_FILE
            if metrics.is_file():
                by_epoch = {r["epoch"]: r["val_top1"] for r in read_metrics(metrics)
                            if r.get("type") == "epoch" and isinstance(r.get("val_top1"), (int, float))}
                run = [by_epoch[e] for e in sorted(by_epoch)]
            else:
                run = kept.get(step.name, {}).get(str(seed), [])
            if run:
                curves.setdefault(step.name, {})[str(seed)] = run
    return curves


def write_outputs(plan: StudyPlan, records: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    # imported here for speed, not to break a cycle (plots imports nothing of the study): matplotlib
    # takes about a second to load, and only writing the figure needs it
    from ..plots import plot_roadmap, plot_study_curves

    results = build_results(plan, records, events)
    out = Path(plan.out)
    atomic_write(out / RESULTS_JSON, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(out / RESULTS_MD, lambda tmp: Path(tmp).write_text(format_markdown(results)))
    # the compute panel compares our architectures with the paper's, so it gets the full-size GMACs@224
    rows = [{**r, "gmacs": r["full_gmacs_224"]} for r in results["steps"]]
    measured = [r for r in results["steps"] if r["top1"]]
    plot_roadmap(rows, study={"steps": measured} if measured else None, path=out / FIGURE)
    curves = read_curves(plan)
    if curves:
        atomic_write(out / CURVES_JSON, lambda tmp: Path(tmp).write_text(json.dumps(curves, indent=1) + "\n"))
        plot_study_curves(curves, out / CURVES_FIGURE)
    return results
