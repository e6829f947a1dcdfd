"""Small layers the network is built from: channel LayerNorm, depthwise conv, stochastic depth, factories."""

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


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int]) -> torch.Tensor:
    """Weight gradient of a depthwise conv, as one grouped conv over the (sample, channel) planes.

    For every channel, dW is the correlation of the padded input with the output gradient, summed
    over the batch. Putting each (sample, channel) plane in its own group makes that a single
    conv2d whose "weights" are the output gradients (swap stride and dilation for strided convs),
    followed by a sum over samples. On CPU, for ConvNeXt-T's 7x7 depthwise convs, this is 2.7x
    (channels_last, as in training) to 9x (NCHW) faster than the generic convolution_backward
    (benchmarks/depthwise_backward.py).
    """
    n, c = x.shape[:2]
    if n == 0:  # stochastic depth dropped every sample: the branch ran on an empty batch
        return x.new_zeros(c, 1, *kernel_size)
    planes = x.contiguous()  # NCHW: each sample's channel planes are adjacent, so (n, c) -> n * c is a view
    kernels = grad.contiguous()
    out = F.conv2d(planes.view(1, n * c, *planes.shape[-2:]), kernels.view(n * c, 1, *kernels.shape[-2:]),
                   stride=dilation, padding=padding, dilation=stride, groups=n * c)
    kh, kw = kernel_size
    return out.view(n, c, *out.shape[-2:])[:, :, :kh, :kw].sum(0).unsqueeze(1)


class _DepthwiseConvFunction(torch.autograd.Function):
    """conv2d(groups=channels) with the weight gradient from `depthwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, weight.shape[-2:], stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (groups == channels) that trains faster on CPU.

    Same parameters, state dict and forward values as nn.Conv2d; only the backward differs, and
    only where it pays: on CPU with gradients on, where oneDNN's depthwise weight gradient is the
    largest non-GEMM cost of a ConvNeXt training step; see `depthwise_weight_grad`. GPUs and
    torch.compile keep the stock kernels.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not torch.is_grad_enabled() or torch.compiler.is_compiling()
                or not (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            # Cast the way autocast casts conv2d, then run without it so backward sees the same dtypes.
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast("cpu", enabled=False):
                return _DepthwiseConvFunction.apply(x, weight, bias, self.stride, self.padding, self.dilation)
        return _DepthwiseConvFunction.apply(x, weight, bias, self.stride, self.padding, self.dilation)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 conv run as a GEMM over the pixels of the channels-last view, as timm's Linear MLP does.

    Same parameters and state dict as nn.Conv2d(kernel_size=1). ``scale`` multiplies the output
    channels (layer scale) by folding into the (small) weights instead of a pass over the output.
    The GEMM is faster than oneDNN's 1x1 convolution forward and backward, and its output is a
    channels_last tensor, which keeps the LayerNorm/GELU around it on contiguous memory.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.weight.flatten(1), self.bias
        if scale is not None:
            weight = weight * scale[:, None]
            bias = bias * scale if bias is not None else None
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "layernorm":
        return LayerNorm2d(channels)
    return nn.BatchNorm2d(channels)


def make_activation(kind: str) -> nn.Module:
    return nn.GELU() if kind == "gelu" else nn.ReLU()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without making the host wait for queued GPU work."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescale survivors by 1/keep."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def keep_mask(self, batch_size: int) -> torch.Tensor:
        """Which samples keep their branch this step: a bool (N,) tensor on the CPU.

        Drawn from the CPU generator whatever the device, so that callers can pick the kept samples
        without waiting for the GPU, and a seeded run draws the same masks on every device.
        """
        return torch.empty(batch_size).bernoulli_(1.0 - self.drop_prob).bool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        mask = to_device(self.keep_mask(x.shape[0]), x.device).to(x.dtype)
        return x * (mask / (1.0 - self.drop_prob)).view((x.shape[0],) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
