"""What a running ``Trainer``'s checkpoints hold, and putting it back on resume. ``tr`` below is the
``loop.Trainer`` (not imported here: imports point from the loop to its pieces).

``capture`` is train_state.pt: the weights, optimizer, scheduler, EMA, grad scaler, every rank's RNG state
and the run's counters (position, best result, NaN/Inf and loss bookkeeping); ``restore`` sets all of
them, so a resumed run continues bitwise as if it had never stopped (``state.py`` writes and reads the
file). ``model_info`` is the metadata of the run's best/last.safetensors.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..checkpoint import ModelInfo
from ..models import is_variant_of
from . import distributed as dist_mod
from .state import rng_state, set_rng_state


def capture(tr) -> dict[str, Any]:
    """The training state of ``tr``; a collective under DDP (every rank's RNG), so every rank calls it."""
    all_rng = dist_mod.all_gather_object(rng_state(), tr.dist)
    return {
        "epoch": tr.epoch, "epoch_step": tr.epoch_step, "step": tr.step,
        "model": {k: v.detach().cpu() for k, v in tr.model.state_dict().items()},
        "optimizer": tr.optimizer.state_dict(), "scheduler": tr.scheduler.state_dict(),
        "ema": tr.ema.state_dict() if tr.ema is not None else None,
        "scaler": tr.scaler.state_dict() if tr.scaler is not None else None,
        "rng": all_rng, "world_size": tr.dist.world_size,
        "best_top1": tr.best_top1, "best_epoch": tr.best_epoch,
        "bad_steps_total": tr.bad_steps_total, "consecutive_bad": tr.consecutive_bad,
        "epoch_loss_sum": tr.epoch_loss_sum, "epoch_loss_count": tr.epoch_loss_count,
        "config": tr.cfg.to_dict(),
        "fitted_epochs": tr.fitted_epochs,  # opt.time_budget's choice, which a resumed run keeps (loop.Trainer)
        # data pruning's scores (a collective under DDP: every rank's losses of the epoch so far)
        "pruning": tr.pruning.state_dict(tr.dist) if tr.pruning is not None else None,
    }


def restore(tr, s: dict[str, Any]) -> None:
    """Put a captured state back into ``tr`` (built for the same config) and say where the run resumes."""
    tr.model.load_state_dict(s["model"])
    tr.optimizer.load_state_dict(s["optimizer"])
    # The schedule is this config's: a resumed run may be longer (opt.epochs) or continue at a lower opt.lr
    # (RESUMABLE_KEYS); with the run's own config this recomputes exactly the saved values.
    schedule = [dict(vars(f)) for f in tr.scheduler.lr_lambdas]
    base_lrs = list(tr.scheduler.base_lrs)
    tr.scheduler.load_state_dict(s["scheduler"])
    tr.scheduler.base_lrs = base_lrs
    for group, base, f, fresh in zip(tr.optimizer.param_groups, base_lrs, tr.scheduler.lr_lambdas, schedule):
        vars(f).update(fresh)
        group["initial_lr"], group["lr"] = base, base * f(tr.scheduler.last_epoch)
    if tr.ema is not None and s.get("ema") is not None:
        tr.ema.load_state_dict(s["ema"])
    if tr.scaler is not None and s.get("scaler") is not None:
        tr.scaler.load_state_dict(s["scaler"])
    if tr.pruning is not None and s.get("pruning") is not None:
        tr.pruning.load_state_dict(s["pruning"], tr.dist)
    tr.epoch, tr.epoch_step, tr.step = s["epoch"], s["epoch_step"], s["step"]
    tr.best_top1, tr.best_epoch = s.get("best_top1", -1.0), s.get("best_epoch", -1)
    # A resume is a fresh chance (e.g. with the lower lr a diverged run advises): the count of bad steps in
    # a row starts over; the run's total is kept.
    tr.bad_steps_total, tr.consecutive_bad = s.get("bad_steps_total", 0), 0
    tr.epoch_loss_sum, tr.epoch_loss_count = s.get("epoch_loss_sum", 0.0), s.get("epoch_loss_count", 0)
    if s.get("world_size", 1) == tr.dist.world_size:
        set_rng_state(s["rng"][tr.dist.rank])
    else:  # a different process count cannot replay the same randomness; stay reproducible anyway
        torch.manual_seed(tr.cfg.runtime.seed + 7919 * tr.dist.rank + tr.step)
    if tr.dist.is_main:
        print(f"resuming from epoch {tr.epoch} step {tr.step} (epoch step {tr.epoch_step})", file=sys.stderr)


def model_info(tr, weights: str, metrics: dict[str, Any]) -> ModelInfo:
    """Metadata for a weights file of ``tr``: architecture, class names, the validation preprocessing, and
    where in the run it was saved; ``weights`` says which ("model" or "ema")."""
    train = {"epoch": tr.epoch, "step": tr.step, "weights": weights, "dataset": tr.cfg.data.dataset, **metrics}
    # the registered name only where it describes the network (model.overrides may have changed it)
    name = tr.cfg.model.name if is_variant_of(tr.model.cfg, tr.cfg.model.name) else None
    return ModelInfo(config=tr.model.cfg, name=name, class_names=tr.data.classes,
                     preprocess=tr.data.preprocess, train=train)


__all__ = ["capture", "model_info", "restore"]
