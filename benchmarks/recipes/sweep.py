"""Sweep the `small` recipe on Fashion-MNIST's training split, validating on 10,000 held-out training images.

Never the test split: every run passes ``--data.holdout 10000``. Each named run is one ``convnext train`` call
(the preset plus the run's overrides); runs whose directory already holds a finished run are skipped, so the
sweep resumes where it stopped. ``--report`` prints one line per run: held-out top-1 (model / EMA) after each
epoch and the training time.

    python benchmarks/recipes/sweep.py demo           # run the `demo` group (see GROUPS)
    python benchmarks/recipes/sweep.py demo --report  # print its results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BASE = ["--preset", "small", "--data.dataset", "fashion_mnist", "--data.holdout", "10000", "--data.workers", "0",
        "--runtime.plots", "false", "--runtime.tensorboard", "false", "--runtime.progress", "false"]
LIGHT_AUG = ["--aug.crop_padding", "2", "--aug.hflip", "0.5", "--aug.label_smoothing", "0.1"]

GROUPS: dict[str, dict[str, list[str]]] = {
    # the demo's budget: 3 epochs of convnext_micro_small_input (~3 minutes on 2 cores)
    "demo": {
        "base": [],
        "light_aug": LIGHT_AUG,
        "lr_8e-3": ["--opt.lr", "8e-3"],
        "batch_256_lr_8e-3": ["--data.batch_size", "256", "--opt.lr", "8e-3"],
    },
}


def run(group: str, name: str, extra: list[str], out: Path) -> None:
    run_dir = out / group / name
    if (run_dir / "done").exists():  # written only after the run finished
        return
    cmd = [sys.executable, "-m", "convnext", "train", *BASE, *extra, "--runtime.out", str(out / group),
           "--runtime.run_name", name, "--runtime.resume", "auto"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    (run_dir / "done").write_text(" ".join(cmd) + "\n")


def report(group: str, out: Path) -> None:
    for name in GROUPS[group]:
        path = out / group / name / "metrics.jsonl"
        if not path.exists():
            print(f"{name:24s} (not run)")
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        epochs = [r for r in records if r["type"] == "epoch"]
        curve = " ".join(f"{e['val_top1']:.2f}/{e.get('ema_top1') or 0:.2f}" for e in epochs)
        steps = [r for r in records if r["type"] == "step"]
        speed = sum(s["img_per_s"] for s in steps) / max(len(steps), 1)
        print(f"{name:24s} {curve}   ({speed:.0f} img/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("group", choices=list(GROUPS))
    p.add_argument("--out", default="runs/recipe-sweeps")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        return report(args.group, out)
    for name, extra in GROUPS[args.group].items():
        run(args.group, name, extra, out)
    report(args.group, out)


if __name__ == "__main__":
    main()
