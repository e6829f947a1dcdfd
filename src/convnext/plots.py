"""Matplotlib figures: training curves, confusion matrix, and the roadmap chart (paper Fig. 2 style).

Each chart has a builder that returns a ``matplotlib.figure.Figure`` (what tests inspect) and a
``plot_*`` function that writes it as PNG. Figures are created without pyplot, so nothing here
touches global GUI state and the Agg renderer is used whatever backend the user configured.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import atomic_write
from .errors import UsageError

METRICS_FILE = "metrics.jsonl"
# Paper Fig. 2 colours: the paper's numbers in grey, ours in a strong colour, so the eye compares them.
PAPER_COLOR = "#9e9e9e"
OURS_COLOR = "#1f77b4"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (a crash never leaves a half-written picture)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------- training curves


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a run's ``metrics.jsonl``.

    A torn last line (the run was killed while writing) is skipped; a bad line elsewhere is an error,
    because it means the file is not what the training loop wrote.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file; pass a run directory written by `convnext train`")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise UsageError(f"{path}:{i}: not a JSON line; the metrics file is damaged") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _series(records: Iterable[Mapping[str, Any]], kind: str, x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("type") != kind:
            continue
        value, pos = r.get(y), r.get(x)
        if isinstance(value, (int, float)) and isinstance(pos, (int, float)) and math.isfinite(value):
            xs.append(pos)
            ys.append(value)
    return xs, ys


def run_figures(records: Sequence[Mapping[str, Any]]) -> dict[str, Figure]:
    """Loss, accuracy and learning-rate figures from metrics records; charts with no data are left out."""
    figures: dict[str, Figure] = {}

    loss_series = [
        ("train loss (step)", _series(records, "step", "step", "loss"), {"lw": 0.8, "alpha": 0.6}),
        ("train loss (epoch)", _series(records, "epoch", "step", "train_loss"), {"marker": "o"}),
        ("val loss", _series(records, "epoch", "step", "val_loss"), {"marker": "s"}),
    ]
    if any(xs for _, (xs, _), _ in loss_series):
        fig = _new_figure(7, 4)
        ax = fig.add_subplot()
        for label, (xs, ys), style in loss_series:
            if xs:
                ax.plot(xs, ys, label=label, **style)
        ax.set(xlabel="step", ylabel="cross-entropy", title="Loss")
        ax.grid(alpha=0.3)
        ax.legend()
        figures["loss"] = fig

    acc_series = [
        ("val top-1", _series(records, "epoch", "epoch", "val_top1")),
        ("val top-5", _series(records, "epoch", "epoch", "val_top5")),
        ("EMA top-1", _series(records, "epoch", "epoch", "ema_top1")),
    ]
    if any(xs for _, (xs, _) in acc_series):
        fig = _new_figure(7, 4)
        ax = fig.add_subplot()
        for label, (xs, ys) in acc_series:
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
        figures["accuracy"] = fig

    xs, ys = _series(records, "step", "step", "lr")
    if not xs:
        xs, ys = _series(records, "epoch", "step", "lr")
    if xs:
        fig = _new_figure(7, 3)
        ax = fig.add_subplot()
        ax.plot(xs, ys, label="learning rate")
        ax.set(xlabel="step", ylabel="learning rate", title="Learning-rate schedule")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        figures["lr"] = fig
    return figures


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write loss.png, accuracy.png and lr.png for a run (into the run directory unless ``out_dir``)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    figures = run_figures(records)
    if not figures:
        raise UsageError(f"{run_dir}: {METRICS_FILE} holds no step or epoch records yet; train first, then plot")
    out = Path(out_dir) if out_dir is not None else (run_dir if run_dir.is_dir() else run_dir.parent)
    return [save_figure(fig, out / f"{name}.png") for name, fig in figures.items()]


# ----------------------------------------------------------------------------- confusion matrix


def confusion_matrix_figure(matrix: Any, class_names: Sequence[str] | None = None) -> Figure:
    """Rows are true classes, columns predictions; colour is the row-normalised rate, text the count."""
    m = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise UsageError(f"confusion matrix must be square (classes x classes), got shape {m.shape}")
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise UsageError(f"{len(names)} class names for a {k}x{k} confusion matrix; pass one name per class")
    rates = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * k + 2)
    fig = _new_figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true")
    total = m.sum()
    acc = 100 * np.trace(m) / total if total else 0.0
    ax.set_title(f"Confusion matrix (accuracy {acc:.2f}%, n={int(total)})")
    if k <= 30:  # beyond that the numbers are unreadable; the colours still tell the story
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    return fig


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str] | None, path: str | os.PathLike) -> Path:
    return save_figure(confusion_matrix_figure(matrix, class_names), path)


# ----------------------------------------------------------------------------- roadmap (Fig. 2)


def study_top1(study: Any) -> dict[str, list[float]]:
    """Top-1 per roadmap step from a study's results, as {step name: [top-1 per seed]}.

    Accepts {name: top1 | [top1, ...]}, a list of {"name"/"step": ..., "top1"/"val_top1": ...} records
    (one per seed), or a dict holding such a list under "results", "runs" or "steps".
    """
    if isinstance(study, Mapping):
        for key in ("results", "runs", "steps"):
            if key in study and isinstance(study[key], (list, tuple)):
                return study_top1(study[key])
        out: dict[str, list[float]] = {}
        for name, value in study.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            out[str(name)] = [float(v) for v in values if isinstance(v, (int, float))]
        return {k: v for k, v in out.items() if v}
    out = {}
    for rec in study or []:
        if not isinstance(rec, Mapping):
            raise UsageError(f"study record {rec!r} is not a mapping; pass dicts with 'name' and 'top1'")
        name = rec.get("name", rec.get("step"))
        top1 = next((rec[k] for k in ("top1", "val_top1", "best_top1", "top1_mean") if rec.get(k) is not None), None)
        if name is None or top1 is None:
            continue
        values = top1 if isinstance(top1, (list, tuple)) else [top1]
        out.setdefault(str(name), []).extend(float(v) for v in values if isinstance(v, (int, float)))
    return {k: v for k, v in out.items() if v}  # steps not run yet draw no bar


def roadmap_figure(rows: Sequence[Mapping[str, Any]], study: Any = None) -> Figure:
    """The paper's Figure 2: one horizontal bar per roadmap step, first step on top.

    Left: ImageNet top-1 from the paper, and next to it our measured top-1 (mean +- std over seeds) when a
    study has results (its own axis: our data set is not ImageNet). Right: compute per step, paper GFLOPs
    next to our measured GMACs.
    """
    if not rows:
        raise UsageError("no roadmap rows to plot; pass convnext.models.summary.roadmap_rows()")
    ours = study_top1(study) if study is not None else {}
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    bar = 0.38
    ncols = 3 if ours else 2
    fig = _new_figure(4.2 * ncols + 1.5, 0.38 * len(rows) + 1.6)
    axes = fig.subplots(1, ncols, sharey=True, gridspec_kw={"width_ratios": [1.2] * (ncols - 1) + [1]})

    ax = axes[0]
    paper = [r["paper_top1"] for r in rows]
    ax.barh(y, paper, height=0.7, color=PAPER_COLOR, label="paper")
    for yi, r in zip(y, rows):
        ax.text(r["paper_top1"] + 0.1, yi, ("~" if r.get("paper_top1_approx") else "") + f"{r['paper_top1']:.1f}",
                va="center", fontsize=7)
    lo = math.floor(min(paper)) - 2
    ax.set_xlim(lo, math.ceil(max(paper)) + 1.5)
    ax.set(xlabel="top-1 (%), paper", title="ImageNet-1K top-1 (paper)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)

    if ours:
        ax = axes[1]
        means = [float(np.mean(ours[n])) if n in ours else np.nan for n in names]
        stds = [float(np.std(ours[n])) if n in ours and len(ours[n]) > 1 else 0.0 for n in names]
        ax.barh(y, np.nan_to_num(means, nan=0.0), height=0.7, xerr=stds, color=OURS_COLOR,
                label="ours", error_kw={"lw": 0.8, "capsize": 2})
        valid = [m for m in means if not math.isnan(m)]
        if not valid:
            raise UsageError(f"the study results name none of the roadmap's steps (they name {sorted(ours)[:3]}); "
                             "pass the results.json of `convnext study roadmap`")
        span = max(valid) - min(valid) if len(valid) > 1 else 1.0
        ax.set_xlim(max(0.0, min(valid) - max(span, 1.0)), min(100.0, max(valid) + 0.6 * max(span, 1.0)))
        for yi, m, s in zip(y, means, stds):
            if not math.isnan(m):
                ax.text(m + s + 0.05 * max(span, 1.0), yi, f"{m:.1f}", va="center", fontsize=7)
        ax.set(xlabel="top-1 (%), mean ± std over seeds", title="Our top-1 (study)")
        ax.grid(axis="x", alpha=0.3)

    ax = axes[-1]
    ax.barh(y - bar / 2, [r["paper_gflops"] for r in rows], height=bar, color=PAPER_COLOR, label="paper")
    ax.barh(y + bar / 2, [r["gmacs"] for r in rows], height=bar, color=OURS_COLOR, label="ours")
    ax.set(xlabel="G multiply-accumulates (paper: GFLOPs)", title="Compute per image")
    ax.grid(axis="x", alpha=0.3)
    # one legend under all panels, so no bar is hidden behind it
    legend: dict[str, Any] = {}
    for a in axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend), fontsize=9,
               frameon=False)
    fig.suptitle("Modernizing a ResNet toward ConvNeXt (paper Fig. 2)")
    return fig


def plot_roadmap(rows: Sequence[Mapping[str, Any]], study: Any = None,
                 path: str | os.PathLike = "roadmap.png") -> Path:
    return save_figure(roadmap_figure(rows, study), path)


def study_curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """A study's learning curves: one panel per roadmap step (in the given order), its top-1 after each pass over
    the training images, one line per seed, every panel on the same axes so steps compare at a glance."""
    steps = [name for name, seeds in curves.items() if any(seeds.values())]
    if not steps:
        raise UsageError("no learning curves to plot: the study's run directories hold no evaluated epoch yet")
    values = [v for name in steps for run in curves[name].values() for v in run]
    lo, hi = math.floor(min(values)) - 1, min(100.0, math.ceil(max(values)) + 1)
    passes = max(len(run) for name in steps for run in curves[name].values())
    ncols = 4
    nrows = math.ceil(len(steps) / ncols)
    fig = _new_figure(3.2 * ncols, 2.3 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True)).ravel()
    for ax, name in zip(axes, steps):
        for seed, run in sorted(curves[name].items()):
            ax.plot(range(1, len(run) + 1), run, marker="o", ms=2.5, lw=1, label=f"seed {seed}")
        last = [run[-1] for run in curves[name].values() if run]
        ax.set_title(f"{name.removeprefix('roadmap_')}: {float(np.mean(last)):.2f}", fontsize=9)
        ax.set_ylim(lo, hi)
        ax.set_xlim(0.5, passes + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(steps):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("pass over the training images")
    fig.supylabel("top-1 (%) after the pass")
    fig.suptitle("Learning curves of every run (title: mean top-1 after the last pass)")
    return fig


def plot_study_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike) -> Path:
    return save_figure(study_curves_figure(curves), path)


__all__ = [
    "confusion_matrix_figure", "plot_confusion_matrix", "plot_roadmap", "plot_run", "plot_study_curves",
    "read_metrics", "roadmap_figure", "run_figures", "save_figure", "study_curves_figure", "study_top1",
]
