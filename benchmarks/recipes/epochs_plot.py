"""What more epochs buy: the best held-out and test top-1 of finished sweep runs against their epochs.

The 30-minute CPU recipe (docs/recipes.md, section 5) ran for 20 to 88 epochs as machines and budgets allowed. This
reads the runs' results (``benchmarks/results/recipes/GROUP.json``, written by ``sweep.py --save``), fits top-1 =
a + b * log2(epochs) by least squares to the held-out and, where the test split was read, to the test scores, and
draws both with the fits (x on a log scale):

    python benchmarks/recipes/epochs_plot.py cpu30_budget cpu30_seeds cpu30_full:bn_48_44ep_mix \\
        --out docs/images/fmnist_epochs.png --json benchmarks/results/recipes/epochs_plot.json

An argument is ``GROUP`` (every run of it) or ``GROUP:RUN``. A run's held-out score is the best epoch of its model
or EMA weights (what ``best.safetensors`` holds); its test score is the one its group's rule read, if any.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared usage module
from usage import UsageExit, run_main  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "recipes"
TARGET = 94.0  # issue #15's 30-minute CPU target, top-1 (%) on the test split


def test_score(test: dict | None, run: str) -> float | None:
    """The test top-1 a group's rule read for ``run``: every run's (``runs``) or the one chosen (``chosen``)."""
    if not test:
        return None
    if "runs" in test:
        return (test["runs"].get(run) or {}).get("test_top1")
    return test.get("test_top1") if test.get("chosen") == run else None


def collect(args: list[str], results: Path = RESULTS) -> list[dict]:
    """One row per run named by ``GROUP`` or ``GROUP:RUN`` arguments: epochs, best held out, test (or None)."""
    rows = []
    for arg in args:
        group, _, wanted = arg.partition(":")
        path = results / f"{group}.json"
        if not path.is_file():
            raise UsageExit(f"{path}: no results for group {group!r}; run `sweep.py {group} --report --save {path}`")
        data = json.loads(path.read_text())
        runs = [r for r in data["runs"] if not wanted or r["run"] == wanted]
        if not runs:
            raise UsageExit(f"group {group!r} has no finished run {wanted!r}; its runs: "
                            f"{', '.join(r['run'] for r in data['runs'])}")
        for r in runs:
            scores = [x for x in (*r["heldout_top1"], *r["heldout_ema_top1"]) if x is not None]
            rows.append({"group": group, "run": r["run"], "epochs": len(r["heldout_top1"]),
                         "heldout_top1": max(scores), "test_top1": test_score(data.get("test"), r["run"])})
    return rows


def points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(epochs, score) of the runs that have a ``key`` score (a test score only where it was read)."""
    return [(r["epochs"], r[key]) for r in rows if r[key] is not None]


def log_fit(epochs: list[int], top1: list[float]) -> dict | None:
    """Least squares top1 = a + b * log2(epochs); None with fewer than two distinct epoch counts."""
    if len(set(epochs)) < 2:
        return None
    b, a = np.polyfit(np.log2(epochs), top1, 1)
    return {"intercept": round(float(a), 3), "per_doubling": round(float(b), 3), "points": len(epochs)}


def epochs_for(fit: dict, top1: float) -> float | None:
    """The epochs at which the fit reaches ``top1`` (None if it never rises)."""
    if fit["per_doubling"] <= 0:
        return None
    return 2 ** ((top1 - fit["intercept"]) / fit["per_doubling"])


def figure(rows: list[dict], fits: dict):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    span = np.linspace(math.log2(min(r["epochs"] for r in rows)), math.log2(max(r["epochs"] for r in rows)), 50)
    for key, label, color, marker in [("heldout_top1", "held out (10,000 training images)", "#1f77b4", "o"),
                                      ("test_top1", "test split", "#d62728", "s")]:
        pts = points(rows, key)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, label=label, zorder=3)
        fit = fits.get(key)
        if fit:
            ax.plot(2 ** span, fit["intercept"] + fit["per_doubling"] * span, color=color, alpha=0.5,
                    label=f"fit: {fit['per_doubling']:+.2f} points per doubling")
    ax.axhline(TARGET, color="#555555", linestyle="--", linewidth=1, label="issue #15's CPU target (test)")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["epochs"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("epochs of 50,000 images")
    ax.set_ylabel("top-1 (%) of the best checkpoint")
    ax.set_title("The 30-minute CPU recipe at more epochs (Fashion-MNIST)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="GROUP[:RUN]")
    ap.add_argument("--out", type=Path, default=None, help="write the figure here (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows and fits here")
    args = ap.parse_args()
    rows = collect(args.runs)
    fits = {}
    for key in ("heldout_top1", "test_top1"):
        pts = points(rows, key)
        fit = log_fit([p[0] for p in pts], [p[1] for p in pts])
        if fit:
            reach = epochs_for(fit, TARGET)
            fit["epochs_for_94"] = round(reach, 1) if reach else None
            fits[key] = fit
    for r in sorted(rows, key=lambda r: r["epochs"]):
        test = f"{r['test_top1']:.2f}" if r["test_top1"] is not None else "  -  "
        print(f"{r['epochs']:4d} epochs  held out {r['heldout_top1']:.2f}  test {test}  {r['group']}:{r['run']}")
    for key, fit in fits.items():
        print(f"{key}: {fit['intercept']:.2f} + {fit['per_doubling']:.3f} * log2(epochs) over {fit['points']} runs; "
              f"{TARGET} at ~{fit['epochs_for_94']} epochs")
    if args.out:
        from convnext.plots import save_figure
        print(f"figure: {save_figure(figure(rows, fits), args.out)}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "epochs_plot", "runs": rows, "fits": fits}, indent=1) + "\n")
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
