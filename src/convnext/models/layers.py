"""Small layers the network is built from: channel LayerNorm, stochastic depth, norm/act factories."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (the paper's "LN").

    The permutes are free for channels_last tensors: NHWC memory viewed as (N, H, W, C) is contiguous.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "layernorm":
        return LayerNorm2d(channels)
    return nn.BatchNorm2d(channels)


def make_activation(kind: str) -> nn.Module:
    return nn.GELU() if kind == "gelu" else nn.ReLU()


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescale survivors by 1/keep."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
