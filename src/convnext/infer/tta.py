"""Test-time augmentation: a wrapper applied from outside the model, like ``fuse.py``'s inference copy.

``flip`` scores each image and its mirror image and averages the two class distributions. It suits data whose
labels survive a horizontal flip (ImageNet, Fashion-MNIST), not data whose do not (digits, text): the caller
chooses, on held-out images, never on the test split.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import check_choice

TTA_MODES = ("none", "flip")


class FlipAverage(nn.Module):
    """``model`` on the batch and on its horizontal mirror; returns logits whose softmax is the mean of the two
    softmaxes (log of the mean probability), so top-k, cross-entropy and ``softmax`` downstream read the average.

    Both views go through ``model`` as one batch of twice the size: one call, the same kernels as without TTA."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # the wrapped model's mode (an inference copy refuses train())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        logits = self.model(torch.cat([x, x.flip(-1)])).float()
        log_probs = logits.log_softmax(dim=1)
        return torch.logsumexp(torch.stack([log_probs[:n], log_probs[n:]]), dim=0) - math.log(2.0)


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` wrapped for test-time augmentation ``mode`` (``none`` returns it unchanged)."""
    check_choice("--tta", mode, TTA_MODES)
    return FlipAverage(model) if mode == "flip" else model


__all__ = ["FlipAverage", "TTA_MODES", "with_tta"]
