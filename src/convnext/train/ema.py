"""The EMA of a model's weights that training evaluates next to the raw weights (``reg.ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after ``num_averaged`` updates, with warmup: min(decay, (1 + n) / (10 + n)).

    Without warmup a decay of 0.998 still gives the random initial weights ~50 % of the average after
    300 steps; the warmup lets the EMA follow the model early and settles on ``decay`` later.
    """
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


class ModelEma(nn.Module):
    """EMA of a model's weights and buffers: the first update copies the model, then
    ema = d * ema + (1 - d) * w, with d = ``decay`` or, with ``warmup``, ``ema_warmup_decay(decay, n)``
    after n updates.

    The same state dict as ``torch.optim.swa_utils.AveragedModel(use_buffers=True)`` (``module.*`` and
    ``n_averaged``), so checkpoints of either resume with the other. Unlike it, the update never reads a
    number back from the device: the update count and the decay stay tensors, and ``update_parameters(model,
    ok)`` skips a step (a NaN/Inf one the optimizer skipped) by its ``ok`` flag instead of an ``if``, so a
    CUDA training step does not wait for the GPU.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.decay, self.warmup = float(decay), warmup
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, ok: torch.Tensor | None = None) -> None:
        """Average ``model``'s current weights in; with ``ok`` (a bool tensor), only where it is true."""
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        floats = [(a, b.detach()) for a, b in zip(mine, theirs) if a.is_floating_point()]
        n = self.n_averaged
        d = torch.full((), self.decay, dtype=torch.float32, device=n.device)
        if self.warmup:
            d = torch.minimum(d, (1 + n) / (10 + n))
        weight = torch.where(n == 0, 1.0, 1.0 - d)  # the first update copies the model
        if ok is not None:
            weight = weight * ok.to(weight.device)
        if floats:
            ema_f, model_f = (list(t) for t in zip(*floats))
            # ema += weight * (model - ema): foreach ops take a tensor scalar without reading it back
            delta = torch._foreach_sub(model_f, ema_f)
            torch._foreach_mul_(delta, weight)
            torch._foreach_add_(ema_f, delta)
        for a, b in zip(mine, theirs):  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            if not a.is_floating_point():
                a.copy_(b if ok is None else torch.where(ok.to(a.device), b, a))
        n += 1 if ok is None else ok.to(n.device).long()


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> ModelEma:
    """``ModelEma`` of ``model`` (see there)."""
    return ModelEma(model, decay, warmup)


__all__ = ["ModelEma", "ema_warmup_decay", "make_ema"]
