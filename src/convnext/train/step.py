"""One optimizer step that never waits for the device, and the step statistics it keeps there.

On a GPU, reading a number back (``loss.item()``, ``if torch.isfinite(...)``) stalls the host until every
queued kernel has run, so the next step's kernels are not queued while this one computes. The step below
keeps its decisions on the device instead:

- the NaN/Inf guard is a bool tensor ``bad``; the fused AdamW kernel skips its update when told so through
  ``found_inf`` (the hook ``torch.amp.GradScaler`` uses), and the EMA update is weighted by ``~bad``;
- the loss, the skipped-step counts and the longest run of skipped steps accumulate in ``StepTally`` on the
  device, and the host reads them (one sync) every ``log_every`` steps, before a checkpoint and at the end
  of an epoch. On the CPU there is nothing to wait for, and the engine reads them after every step.

A skipped step is exactly as before: no change to the weights, the optimizer state or the EMA; the schedule
moves on. Optimizers without a fused kernel (SGD) fall back to reading ``bad`` on the host.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..runtime import autocast
from . import distributed as dist_mod


class StepTally:
    """Per-step results accumulated on the device since the last ``read``."""

    def __init__(self, device: torch.device, consecutive_bad: int = 0) -> None:
        z = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.loss_sum, self.last_loss = z(torch.float64), z(torch.float32)
        self.good, self.bad = z(torch.long), z(torch.long)
        self.run = torch.tensor(consecutive_bad, dtype=torch.long, device=device)  # skipped steps in a row now
        self.worst_run = self.run.clone()  # the longest such run since the last read

    def add(self, loss: torch.Tensor, bad: torch.Tensor) -> None:
        ok = (~bad).long()
        self.loss_sum += torch.where(bad, 0.0, loss.double())
        self.last_loss = loss.float()
        self.good += ok
        self.bad += 1 - ok
        self.run = (self.run + 1) * (1 - ok)
        self.worst_run = torch.maximum(self.worst_run, self.run)

    def read(self) -> dict:
        """The totals since the last read (one host sync), and start a new window."""
        values = torch.stack([self.loss_sum, self.last_loss.double(), self.good.double(), self.bad.double(),
                              self.run.double(), self.worst_run.double()]).tolist()
        out = dict(zip(("loss_sum", "last_loss", "good", "bad", "run", "worst_run"), values))
        for k in ("good", "bad", "run", "worst_run"):
            out[k] = int(out[k])
        out["steps"] = out["good"] + out["bad"]
        self.loss_sum.zero_()
        self.good.zero_()
        self.bad.zero_()
        self.worst_run.copy_(self.run)
        return out


def _apply_update(optimizer: torch.optim.Optimizer, scaler, bad: torch.Tensor) -> None:
    """optimizer.step(), skipped where ``bad`` is true, without reading ``bad`` back when the optimizer can
    be told on the device."""
    if scaler is not None:
        # fp16: the scaler skips steps whose gradients overflowed (a non-finite loss gives such gradients)
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused kernels read found_inf on the device
        optimizer.grad_scale, optimizer.found_inf = None, bad.float()
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
    elif not bool(bad):  # a host sync, for optimizers without a fused kernel
        optimizer.step()


def train_step(tr, batches, samples=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step of the ``loop.Trainer`` ``tr`` over ``update_freq`` micro-batches.

    ``samples`` (data pruning, ``pruning.py``): per micro-batch (image indices, positions, loss weights or None);
    the loss is then the weighted mean of the per-image losses, which are recorded as the images' scores (a host
    read, as the pruned order needs them on the host). Returns device tensors (mean loss, gradient norm, bad);
    without ``samples`` nothing is read back to the host. The returned loss is unweighted.
    """
    c, k = tr.cfg, len(batches)
    mixer = tr.epoch_mixer()
    loss_sum = torch.zeros((), device=tr.device)
    for i, (images, labels) in enumerate(batches):
        images = images.to(tr.device, non_blocking=True)
        labels = labels.to(tr.device, non_blocking=True)
        if mixer is not None:
            images, targets = mixer(images, labels)
        if c.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # DDP all-reduces the gradients on the last micro-batch only
        accumulate = tr.dist.enabled and i < k - 1 and hasattr(tr.train_net, "no_sync")
        with tr.train_net.no_sync() if accumulate else contextlib.nullcontext():
            with autocast(tr.device, c.runtime.amp):
                logits = tr.train_net(images)
            logits = logits.float()
            # soft targets, mixed and smoothed by the mixer; else the labels, smoothed here
            target, smoothing = (targets, 0.0) if mixer is not None else (labels, c.aug.label_smoothing)
            if samples is None:
                loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
                scaled = loss / k
            else:
                indices, positions, weights = samples[i]
                each = F.cross_entropy(logits, target, label_smoothing=smoothing, reduction="none")
                tr.pruning.record(indices, each.detach(), positions)
                loss = each.mean()
                scaled = (each if weights is None else each * weights.to(each.device)).mean() / k
            (tr.scaler.scale(scaled) if tr.scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    if tr.scaler is not None:
        tr.scaler.unscale_(tr.optimizer)
    params = [p for p in tr.model.parameters() if p.grad is not None]
    if c.opt.clip_grad:
        norm = torch.nn.utils.clip_grad_norm_(params, c.opt.clip_grad)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    stats = torch.stack([loss_sum / k, norm.to(loss_sum.device).float()])
    if tr.dist.enabled:
        stats = dist_mod.all_reduce_sum(stats, tr.dist).float() / tr.dist.world_size  # the same on every rank
    loss, norm = stats[0], stats[1]
    # fp16 overflow in the gradients is the scaler's business (it skips and lowers the scale);
    # in fp32/bf16 a non-finite gradient is as bad as a non-finite loss.
    bad = ~torch.isfinite(loss) if tr.scaler is not None else ~(torch.isfinite(loss) & torch.isfinite(norm))
    _apply_update(tr.optimizer, tr.scaler, bad)
    if tr.ema is not None:
        tr.ema.update_parameters(tr.model, ok=~bad)
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scheduler.step()
    return loss, norm, bad


__all__ = ["StepTally", "train_step"]
