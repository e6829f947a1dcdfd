"""`convnext train`: run the training recipe from a preset, a config file and per-field flags.

Every TrainConfig field is a flag named after its dotted path (``--opt.lr 1e-3``,
``--data.batch_size 64``); ``--set KEY=VALUE`` reaches nested keys such as
``model.overrides.kernel_size=9``. Works under ``torchrun --nproc_per_node N -m convnext train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

import yaml

from ..checkpoint import read_info
from ..train import PRESETS, TrainConfig, load_config, train
from ..train.config import field_help
from . import COMMANDS


def _config_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("config fields (override the preset and the config file)")
    docs = field_help()
    for section in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[section.name]
        defaults = cls()
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            group.add_argument(f"--{key}", dest=f"cfg:{key}", default=argparse.SUPPRESS, metavar="V",
                               help=f"{docs.get(key, '')} (paper preset: {getattr(defaults, f.name)!r})".strip())


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "train", help=COMMANDS["train"], formatter_class=formatter,
        description="Train any registered model (roadmap steps included) on an image folder, Fashion-MNIST, "
                    "CIFAR-10/100 or synthetic data. Writes <out>/<run_name>/ with config.yaml, metrics.jsonl, tb/, "
                    "last/best.safetensors and train_state.pt.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="starting recipe; 'paper' = the ImageNet-1K recipe (default when no config names one)")
    p.add_argument("--config", default=None, help="YAML or TOML file (may set `preset:`)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': continue from the newest valid checkpoint of the run, if any; or a run dir / "
                        "train_state.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set model.overrides.kernel_size=9")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    _config_flags(p)
    p.set_defaults(func=run)


def resolve_config(args) -> TrainConfig:
    overrides = [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("cfg:")]
    overrides += list(args.set)
    if args.resume is not None:
        overrides.append(f"runtime.resume={args.resume}")
    return load_config(args.config, overrides, preset_name=args.preset)


def run(args) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
        return 0
    top1, ema = summary["final_val_top1"], summary["final_ema_top1"]
    if top1 is not None:
        # best.safetensors holds the better of the model and its EMA; its metadata says which
        which = read_info(summary["best_checkpoint"]).train.get("weights") if summary["best_checkpoint"] else None
        weights = {"ema": ", EMA weights", "model": ", model weights"}.get(which, "")
        line = (f"val top-1 {top1:.2f}% (best {summary['best_val_top1']:.2f}% at epoch {summary['best_epoch']}"
                f"{weights})")
        if ema is not None:
            line += f", EMA top-1 {ema:.2f}%"
        print(line)
    print(f"{summary['epochs']} epoch(s), {summary['steps']} steps in {summary['wall_time_s']:.0f} s"
          + (f", {summary['skipped_steps']} NaN/Inf step(s) skipped" if summary["skipped_steps"] else "")
          + (f", {summary['bad_images']} bad image file(s) skipped" if summary["bad_images"] else ""))
    print(f"run directory: {summary['run_dir']}")
    kept = [(summary["best_checkpoint"], "best"), (summary["last_checkpoint"], "last"),
            (summary["last_ema_checkpoint"], "last EMA")]
    print("checkpoint:    " + ", ".join(f"{path} ({what})" for path, what in kept if path))
    if summary["plots"]:
        print(f"curves:        {', '.join(summary['plots'])}")
    print(f"tensorboard:   tensorboard --logdir {os.path.join(summary['run_dir'], 'tb')}")
    return 0
