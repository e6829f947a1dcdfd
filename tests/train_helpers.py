"""Tiny training configs shared by the training tests (CPU, seconds per run)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from convnext.cli import main as cli_main
from convnext.models import ConvNeXt
from convnext.train import budget, loop, preset, train
from convnext.train.logging import read_metrics

TINY_ARCH = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
NO_AUG = {"aug.random_resized_crop": False, "aug.hflip": 0.0, "aug.randaugment": False, "aug.random_erasing": 0.0,
          "aug.mixup": 0.0, "aug.cutmix": 0.0, "aug.label_smoothing": 0.0, "aug.crop_ratio": 1.0}


def tiny_config(out, **over):
    base = {
        "model.name": "convnext_atto", "model.overrides": dict(TINY_ARCH),
        "data.dataset": "synthetic", "data.synthetic_samples": 64, "data.synthetic_classes": 4,
        "data.image_size": 32, "data.batch_size": 8, "data.workers": 0,
        "opt.epochs": 2, "opt.warmup_epochs": 0.5, "opt.lr": 3e-3, "opt.lr_base_batch": None,
        "reg.drop_path": 0.0, "reg.ema": False, "aug.label_smoothing": 0.0,
        # these tests assert CPU semantics (bitwise resume, determinism, hand-computed values): say so, or on a
        # CUDA machine runtime.device=auto would run them on the GPU
        "runtime.device": "cpu", "runtime.channels_last": False,
        "runtime.out": str(out), "runtime.run_name": "run", "runtime.progress": False,
        "runtime.tensorboard": False, "runtime.plots": False, "runtime.log_every": 1,
    }
    base.update(over)
    return preset("small").replace(base)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def comparable(records):
    """metrics.jsonl records without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in records]


def run_dir(out) -> Path:
    return Path(out) / "run"


def assert_resumes_bitwise(make_config, out, stop_at: int) -> None:
    """``make_config(out, **over)`` trained whole, and again stopped after step ``stop_at`` (a checkpoint every
    step) then resumed with --resume auto: the same last weights, bit for bit."""
    whole = train(make_config(Path(out) / "whole"))
    stopped = train(make_config(Path(out) / "parts", **{"runtime.max_steps": stop_at, "runtime.save_every_steps": 1}))
    assert stopped["steps"] == stop_at < whole["steps"]
    resumed = train(make_config(Path(out) / "parts", **{"runtime.resume": "auto"}))
    # it went on from the stopped run's state (a run that started over would match the whole run's weights too)
    assert resumed["resumed_from"] is not None and resumed["steps"] == whole["steps"]
    logged = [r["step"] for r in read_metrics(run_dir(Path(out) / "parts") / "metrics.jsonl") if r["type"] == "step"]
    assert len(logged) == len(set(logged))  # no step trained twice
    a = weights(run_dir(Path(out) / "whole") / "last.safetensors")
    b = weights(run_dir(Path(out) / "parts") / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def poison_forward(monkeypatch, bad_calls: set[int], kind: str):
    """Training forwards number ``bad_calls`` (1-based) give a NaN/Inf loss or finite loss + NaN grads."""
    original, calls = ConvNeXt.forward, {"n": 0}

    def forward(self, x):
        out = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                if kind == "nan_grad":  # the loss stays finite, the gradients do not
                    out.register_hook(lambda g: g * float("nan"))
                else:
                    out = out * float(kind)
        return out

    monkeypatch.setattr(ConvNeXt, "forward", forward)


class SimulatedMachine:
    """budget.clock (train/budget.py) driven by the run's work: optimizer step number i (from 0), on images of
    ``size`` px, costs ``step_s(i, size)`` seconds and a validation ``val_s``, so a test can give a run any pace,
    transients included."""

    def __init__(self, monkeypatch, step_s, val_s=0.0):
        self.now, self.steps = 0.0, 0
        monkeypatch.setattr(budget, "clock", lambda: self.now)
        step, validate = loop.train_step, loop.validate

        def timed_step(trainer, batches, *args, **kwargs):
            self.now += step_s(self.steps, batches[0][0].shape[-1])
            self.steps += 1
            return step(trainer, batches, *args, **kwargs)

        def timed_validate(*args, **kwargs):
            self.now += val_s
            return validate(*args, **kwargs)

        monkeypatch.setattr(loop, "train_step", timed_step)
        monkeypatch.setattr(loop, "validate", timed_validate)


def benchmark_script(path: str):
    """A benchmark script (``benchmarks/PATH``) imported as a module, for its functions."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(Path(path).stem, root / "benchmarks" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_captured(entry, capsys) -> tuple[int, str, str]:
    """``entry()`` as a program's main: its exit status (returned, or raised as SystemExit, as argparse's usage
    errors and --help do), and what it printed to stdout and stderr."""
    capsys.readouterr()
    try:
        rc = entry() or 0
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`convnext ARGV` in this process: exit status, stdout, stderr (a subprocess would import torch again, ~5-8 s
    on a 2-core CI machine; the suite keeps subprocesses for what needs one: kill -9, torchrun, closed pipes)."""
    return _run_captured(lambda: cli_main([str(a) for a in argv]), capsys)


def run_script(path: str, argv, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`python benchmarks/PATH ARGV` in this process, through the script's own ``run_main`` (what its
    ``__main__`` block runs): exit status, stdout and stderr, as a subprocess would give them."""
    module = benchmark_script(path)
    argv = [str(a) for a in argv]
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{path}", *argv])
    return subprocess.CompletedProcess([path, *argv], *_run_captured(lambda: module.run_main(module.main), capsys))
