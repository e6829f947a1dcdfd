"""The EMA of a model's weights that training evaluates next to the raw weights (``reg.ema``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after ``num_averaged`` updates, with warmup: min(decay, (1 + n) / (10 + n)).

    Without warmup a decay of 0.998 still gives the random initial weights ~50 % of the average after
    300 steps; the warmup lets the EMA follow the model early and settles on ``decay`` later.
    """
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """EMA of weights and buffers: the first update copies the model, then ema = d * ema + (1 - d) * w,
    with d = ``decay`` or, with ``warmup``, ``ema_warmup_decay(decay, updates so far)``."""
    if not warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def warmup_ema(ema_params, params, num_averaged):
        if not torch.is_floating_point(ema_params[0]):  # e.g. BatchNorm's num_batches_tracked
            torch._foreach_copy_(ema_params, params)
            return
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_warmup_decay(decay, int(num_averaged)))

    return AveragedModel(model, multi_avg_fn=warmup_ema, use_buffers=True)


__all__ = ["ema_warmup_decay", "make_ema"]
