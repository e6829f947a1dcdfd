"""`convnext study roadmap`: train every roadmap step under one budget and publish table + figure."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..study.plan import StudyPlan, select_steps
from ..study.recipe import BUDGETS, DATA_ALIASES, STUDY_DATASETS, get_budget
from ..study.runner import run_study
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "study",
        help=COMMANDS["study"],
        formatter_class=formatter,
        description="Train every roadmap step (ResNet-50 -> ConvNeXt-T) with the same data, seeds and step budget, "
                    "resumably; write results.json, results.md and roadmap.png.",
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    r = studies.add_parser("roadmap", help="the modernization roadmap", formatter_class=formatter,
                           description="Every (step, seed) is one training run of the engine. A finished run is "
                                       "never redone; an interrupted one resumes from its last checkpoint.")
    r.add_argument("--data", type=_data_name, choices=STUDY_DATASETS, default="fashion_mnist",
                   help="training data (the old spelling fashion-mnist is read as fashion_mnist)")
    r.add_argument("--data-root", default=None, help="directory of the Fashion-MNIST IDX files (default: system copy)")
    r.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                   help="named budget: cpu (the committed study: 5 passes at 32 px), cpu_short (the study committed "
                        "before it: 1/12 of a pass at 64 px), gpu (64 px networks for 30 passes, data on the device), "
                        "micro (seconds)")
    r.add_argument("--seeds", type=int, default=3, help="number of seeds per step (seeds 0..N-1)")
    r.add_argument("--steps", default=None, help="comma-separated roadmap step names (default: every step)")
    r.add_argument("--out", default="results/roadmap", help="study outputs (records, results, figure, log)")
    r.add_argument("--work-dir", default=None, help="engine run directories (default: runs/roadmap-study)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    r.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is fastest on a machine shared with other jobs)")
    g = r.add_argument_group("budget overrides (change the study: they must match on resume)")
    for flag, tp, what in [("--image-size", int, "input resolution"), ("--width-mult", float, "width multiplier"),
                           ("--batch-size", int, "images per optimizer step"),
                           ("--train-images", int, "training subset size"), ("--epochs", int, "passes over it"),
                           ("--val-images", int, "evaluation subset size")]:
        g.add_argument(flag, type=tp, default=None, help=what)
    r.set_defaults(func=run)


def _data_name(name: str) -> str:
    # the registry's names; the hyphenated spelling of earlier versions (the committed study's command)
    # still works, and argparse then checks the registry name against the choices
    return DATA_ALIASES.get(name, name)


def _command(args) -> str:
    """The command line that makes this study (the settings that decide results, normalised)."""
    parts = ["convnext", "study", "roadmap", "--data", args.data, "--budget", args.budget, "--seeds", str(args.seeds)]
    for flag in ("steps", "image_size", "width_mult", "batch_size", "train_images", "epochs", "val_images"):
        value = getattr(args, flag)
        if value is not None:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    return shlex.join(parts)


def run(args) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: a study needs at least one seed; use --seeds 2 or more")
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads} must be >= 0")
    budget = get_budget(args.budget).replace(
        image_size=args.image_size, width_mult=args.width_mult, batch_size=args.batch_size,
        train_images=args.train_images, epochs=args.epochs, val_images=args.val_images)
    names = [n.strip() for n in args.steps.split(",") if n.strip()] if args.steps else None
    out = Path(args.out)
    plan = StudyPlan(out=out, work_dir=Path(args.work_dir or "runs/roadmap-study"), budget=budget, data=args.data,
                     steps=select_steps(names), seeds=tuple(range(args.seeds)), data_root=args.data_root,
                     device=args.device, command=_command(args))
    results = run_study(plan, threads=args.threads, jobs=args.jobs)
    state = "complete" if results["complete"] else "incomplete"
    print(f"study {state}: {results['runs_done']}/{results['runs_planned']} runs, "
          f"wall time {results['wall_time_s'] / 60:.1f} min")
    for name in ("results.json", "results.md", "roadmap.png"):
        print(out / name)
    return 0
