"""The network: stem -> stages of residual blocks -> head, all shaped by one ArchConfig.

The same three classes build ResNet-50, every step of the paper's roadmap, the ConvNeXt family
and isotropic ConvNeXt; only the config differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ArchConfig
from .layers import DropPath, make_activation, make_norm


class Block(nn.Module):
    """One residual block; the config decides conv order, widths, norms and activations.

    Stride (in-block downsampling) goes on the spatial conv, as in torchvision's ResNet-50 (v1.5).
    """

    def __init__(self, cfg: ArchConfig, in_dim: int, dim: int, stride: int, drop_path: float) -> None:
        super().__init__()
        hidden = int(round(dim * cfg.mlp_ratio))
        k, bias = cfg.kernel_size, cfg.conv_bias
        if cfg.layout == "bottleneck":
            # 1x1 in->hidden, k x k on hidden, 1x1 hidden->dim (ResNet; inverted when mlp_ratio > 1)
            self.order = ("pwconv1", "dwconv", "pwconv2")
            spatial = hidden
        else:
            # "move up depthwise conv": k x k on the narrow input, then 1x1 expand and 1x1 reduce
            self.order = ("dwconv", "pwconv1", "pwconv2")
            spatial = in_dim
        groups = spatial if cfg.depthwise else 1
        convs = {
            "dwconv": nn.Conv2d(spatial, spatial, k, stride=stride, padding=k // 2, groups=groups, bias=bias),
            "pwconv1": nn.Conv2d(in_dim, hidden, 1, bias=bias),
            "pwconv2": nn.Conv2d(hidden, dim, 1, bias=bias),
        }
        # Norms: ResNet's bn1/bn2/bn3 become norm1/norm2/norm3 (one after each conv, in order);
        # ConvNeXt's single norm after the first conv is just `norm`. Modules are registered in
        # forward order so parameters() lists them as the reference implementations do.
        self.norm_after: dict[str, str] = {}
        for i, name in enumerate(self.order):
            setattr(self, name, convs[name])
            if cfg.norms == "per_conv" or i == 0:
                attr = f"norm{i + 1}" if cfg.norms == "per_conv" else "norm"
                self.norm_after[name] = attr
                setattr(self, attr, make_norm(cfg.norm, convs[name].out_channels))
        # ResNet: activation after every conv but the last, and after the residual add.
        # ConvNeXt ("fewer activations"): one, right before the last (1x1 reduce) conv.
        self.act_after = self.order[:2] if cfg.activations == "per_conv" else self.order[1:2]
        self.act_after_residual = cfg.activations == "per_conv"
        self.act = make_activation(cfg.activation)

        self.gamma = (
            nn.Parameter(torch.full((dim,), float(cfg.layer_scale_init)))
            if cfg.layer_scale_init is not None and cfg.layer_scale_init > 0
            else None
        )
        self.drop_path = DropPath(drop_path)
        if in_dim != dim or stride != 1:
            # projection shortcut (ResNet "downsample"): 1x1 conv with the block's stride, then a norm
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", nn.Conv2d(in_dim, dim, 1, stride=stride, bias=bias))
            self.shortcut.add_module("norm", make_norm(cfg.norm, dim))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        for name in self.order:
            x = getattr(self, name)(x)
            if name in self.norm_after:
                x = getattr(self, self.norm_after[name])(x)
            if name in self.act_after:
                x = self.act(x)
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        x = shortcut + self.drop_path(x)
        return self.act(x) if self.act_after_residual else x


class Stem(nn.Sequential):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        width = cfg.stem_width
        if cfg.stem == "resnet":
            self.add_module("conv", nn.Conv2d(cfg.in_chans, width, 7, stride=2, padding=3, bias=cfg.conv_bias))
            self.add_module("norm", make_norm(cfg.norm, width))
            self.add_module("act", make_activation(cfg.activation))
            self.add_module("pool", nn.MaxPool2d(3, stride=2, padding=1))
        else:
            p = cfg.stem_patch_size
            self.add_module("conv", nn.Conv2d(cfg.in_chans, width, p, stride=p, bias=cfg.conv_bias))
            if cfg.stem_norm:
                self.add_module("norm", make_norm(cfg.norm, width))


class Downsample(nn.Sequential):
    """Separate downsampling layer between stages: norm, then 2x2 stride-2 conv."""

    def __init__(self, cfg: ArchConfig, in_dim: int, dim: int) -> None:
        super().__init__()
        self.add_module("norm", make_norm(cfg.norm, in_dim))
        self.add_module("conv", nn.Conv2d(in_dim, dim, 2, stride=2, bias=cfg.conv_bias))


class Stage(nn.Module):
    def __init__(self, cfg: ArchConfig, index: int, in_dim: int, drop_paths: list[float]) -> None:
        super().__init__()
        dim = cfg.dims[index]
        first_stride = 1 if index == 0 else 2
        if cfg.downsample == "separate" and index > 0:
            self.downsample: nn.Module = Downsample(cfg, in_dim, dim)
            in_dim, first_stride = dim, 1
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[
                Block(cfg, in_dim if i == 0 else dim, dim, first_stride if i == 0 else 1, drop_paths[i])
                for i in range(cfg.depths[index])
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pool -> (norm) -> dropout -> linear classifier."""

    def __init__(self, cfg: ArchConfig, dim: int) -> None:
        super().__init__()
        self.norm = make_norm("layernorm", dim) if cfg.head_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.head_dropout)
        self.fc = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((2, 3), keepdim=True)).flatten(1)
        if pre_logits:
            return x
        return self.fc(self.dropout(x))


class ConvNeXt(nn.Module):
    """A configurable ConvNet: ResNet-50, every roadmap step, ConvNeXt and isotropic ConvNeXt."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dims[-1]
        self.stem = Stem(cfg)
        # Stochastic depth rate grows linearly from 0 to drop_path_rate over all blocks.
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, in_dim, start = [], cfg.stem_width, 0
        for i, depth in enumerate(cfg.depths):
            stages.append(Stage(cfg, i, in_dim, rates[start : start + depth]))
            in_dim, start = cfg.dims[i], start + depth
        self.stages = nn.Sequential(*stages)
        self.head = Head(cfg, self.num_features)
        self.reset_parameters()

    @property
    def min_input_size(self) -> int:
        return self.cfg.total_stride

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.cfg.norm == "batchnorm":
                    # ResNet-style nets keep torchvision's He init; BN re-normalises anyway.
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    else:
                        bound = 1 / math.sqrt(m.in_features)
                        nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head.fc, nn.Linear) and self.cfg.head_init_scale != 1.0:
            with torch.no_grad():
                self.head.fc.weight.mul_(self.cfg.head_init_scale)
                self.head.fc.bias.mul_(self.cfg.head_init_scale)

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"expected input of shape (batch, {self.cfg.in_chans}, height, width), got {tuple(x.shape)}; "
                f"convert the images to {self.cfg.in_chans} channel(s) or build the model with in_chans={x.shape[1] if x.ndim == 4 else '?'}"
            )
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the network's total stride "
                f"{self.min_input_size}; resize images to at least {self.min_input_size}x{self.min_input_size}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (before pooling and the head norm)."""
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
