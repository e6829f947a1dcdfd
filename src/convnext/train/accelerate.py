"""CPU training accelerations, swapped into a built model by the engine (``accelerate_for_training``).

Each replacement keeps the module's parameters, state dict and results (to float rounding); only how the
CPU computes them changes. They pay on CPU, where a ConvNeXt step is dominated by oneDNN kernels that are
slow for these shapes; on GPUs and under ``torch.compile`` the stock modules are faster or fuse on their
own, so the engine leaves the model as built there. The same idea as ``convnext.infer.fuse`` for inference:
the model file stays the paper's, the speed-ups live here.

- ``DepthwiseConv2d``: the depthwise conv's weight gradient as one grouped conv (2.7-9x faster on CPU).
- ``PointwiseConv2d``: 1x1 convs as GEMMs on the channels-last view, with layer scale folded into the weights.
- ``TrainingBlock``: stochastic depth that runs the residual branch only on the samples it keeps.
- ``NHWCGELU``: GELU on a channels_last activation as the contiguous NHWC tensor it is in memory (1.3-1.6x faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convnext import Block, ConvNeXt


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
    if grad.shape[-2:] == (1, 1):
        # A 1x1 output map (a last stage at 32 px): the grouped conv below would have 1x1 "kernels", which
        # PyTorch runs on one thread as one tiny conv per (sample, channel) group, ~100x slower than this. The
        # one output pixel sees one input window: dW is that window weighted by the gradient, summed over samples.
        (kh, kw), (dh, dw) = kernel_size, dilation
        window = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))[
            :, :, : (kh - 1) * dh + 1 : dh, : (kw - 1) * dw + 1 : dw]
        return torch.einsum("nchw,nc->chw", window, grad[:, :, 0, 0]).unsqueeze(1)
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


class TrainingBlock(Block):
    """A Block whose training forward skips the work stochastic depth throws away, and whose layer scale
    is folded into ``pwconv2``'s weights. Only for blocks without BatchNorm: batch statistics need every
    sample, dropped or not."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma is None or not isinstance(self.pwconv2, PointwiseConv2d) or not isinstance(self.norm3, nn.Identity):
            return super().project(x)
        # `* gamma` folded into pwconv2's (small) weights: one pass less over the block's output
        return self.pwconv2(x, scale=self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.drop_path.drop_prob
        if not (self.training and p > 0) or torch.compiler.is_compiling():
            return super().forward(x)
        # Same draw and same result as multiplying the dropped samples' branch by zero (DropPath), but the
        # branch runs only on the kept samples: saves drop_prob of the block's compute on average.
        shortcut = self.shortcut(x)
        keep = self.drop_path.keep_mask(len(x))
        if keep.all():
            x = torch.add(shortcut, self.residual(x), alpha=1 / (1 - p))
        else:
            kept = keep.nonzero().flatten()  # a CPU-only module: no device copy
            channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            subset = x.index_select(0, kept)  # may be empty: the branch still runs, so DDP sees every parameter used
            if channels_last:  # index_select returns NCHW-contiguous memory
                subset = subset.contiguous(memory_format=torch.channels_last)
            branch = self.residual(subset)
            x = shortcut.index_add(0, kept, branch.to(shortcut.dtype), alpha=1 / (1 - p))
        return self.act3(x)


class NHWCGELU(nn.GELU):
    """nn.GELU that runs a channels_last activation as the contiguous NHWC tensor it is in memory.

    PyTorch's CPU GELU takes a slower path for a 4-D channels_last tensor than for a contiguous one: forward and
    backward together 1.3-1.6x slower at ConvNeXt's hidden widths (``benchmarks/activation_layout.py``), where the
    GELUs are ~13 % of the 30-minute recipe's step. The permuted view is the same memory and the same values; its
    results are those of GELU on a contiguous tensor, which differ from the channels_last path's by float rounding
    (one unit in the last place).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return super().forward(x)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.padding_mode == "zeros"


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding == (0, 0) and conv.dilation == (1, 1))


def accelerate_for_training(model: nn.Module, device: torch.device | str, compiled: bool = False) -> int:
    """Swap the CPU training accelerations into ``model``'s blocks, in place, where they pay: on CPU and
    without ``torch.compile``. Returns how many modules were changed (0 elsewhere).

    Swapping changes each module's class only: parameters (the same tensors), state dict and outputs stay,
    so checkpoints, the optimizer and EMA see the model as built.
    """
    if torch.device(device).type != "cpu" or compiled or not isinstance(model, ConvNeXt):
        return 0
    changed = 0
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if type(block.dwconv) is nn.Conv2d and _is_depthwise(block.dwconv):
            block.dwconv.__class__ = DepthwiseConv2d
            changed += 1
        for conv in (block.pwconv1, block.pwconv2):
            if type(conv) is nn.Conv2d and _is_pointwise(conv):
                conv.__class__ = PointwiseConv2d
                changed += 1
        if type(block) is Block and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules()):
            block.__class__ = TrainingBlock
            changed += 1
    for act in [m for m in model.modules() if type(m) is nn.GELU]:
        act.__class__ = NHWCGELU
        changed += 1
    return changed


def to_channels_last(model: nn.Module) -> None:
    """``model.to(memory_format=torch.channels_last)``, in place, except that the weights of the accelerated convs
    (PointwiseConv2d's (out, in, 1, 1), DepthwiseConv2d's (channels, 1, k, k)) keep contiguous strides.

    For those shapes both layouts are the same memory, but the strides differ, and the weight gradients that
    these modules' own backward passes make have contiguous ones: DistributedDataParallel lays its gradient
    buckets out like the parameters, so mismatched strides make it warn on every rank and copy each gradient
    instead of viewing it.
    """
    model.to(memory_format=torch.channels_last)
    for conv in model.modules():
        if isinstance(conv, (DepthwiseConv2d, PointwiseConv2d)):
            conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)


__all__ = ["DepthwiseConv2d", "NHWCGELU", "PointwiseConv2d", "TrainingBlock", "accelerate_for_training",
           "depthwise_weight_grad", "to_channels_last"]
