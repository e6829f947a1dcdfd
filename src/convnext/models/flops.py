"""Parameter and FLOP counting.

The paper's "FLOPs" are multiply-accumulates of convolutions and linear layers (fvcore's convention),
so count_flops returns GMACs: torch.utils.flop_counter's FLOPs (2 per MAC) divided by 2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), per_module: bool = False):
    """GMACs of one forward pass on a single image of `input_size` (C, H, W).

    With per_module=True also returns {module name: GMACs} at every depth of the module tree.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros((1, *input_size), device=device)
        counter = FlopCounterMode(display=False, depth=None)
        with counter:
            model(x)
    finally:
        model.train(was_training)
    total = counter.get_total_flops() / 2 / 1e9
    if not per_module:
        return total
    per = {
        name: sum(counts.values()) / 2 / 1e9 for name, counts in counter.get_flop_counts().items()
    }
    return total, per
