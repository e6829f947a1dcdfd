"""Small layers the network is built from: channel LayerNorm, stochastic depth, norm/activation factories."""

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


class StridedPointwiseConv(nn.Conv2d):
    """``nn.Conv2d(in, out, 1, stride=s)`` (ResNet's projection shortcut), computed as the same 1x1 conv on
    every s-th pixel: the same parameters, outputs and gradients (a 1x1 kernel at stride s reads exactly
    those pixels).

    Why not the strided conv itself: on CPU, PyTorch 2.14's backward of a strided 1x1 conv on a
    channels_last input (what the permute inside LayerNorm2d produces) corrupts the heap when torch runs
    one thread (``free(): invalid next size``, then SIGABRT); the roadmap's LayerNorm steps hit it.
    tests/test_layers.py reproduces it with the plain conv in a subprocess.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


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

    def keep_mask(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Which samples keep their branch this step: a bool (N,) tensor drawn on ``device`` (from its
        generator: on a GPU no host work and no copy)."""
        return torch.empty(batch_size, device=device).bernoulli_(1.0 - self.drop_prob).bool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        mask = self.keep_mask(x.shape[0], x.device).to(x.dtype)
        return x * (mask / (1.0 - self.drop_prob)).view((x.shape[0],) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
