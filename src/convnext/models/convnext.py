"""The network: stem -> stages of residual blocks -> head, all shaped by one ArchConfig.

The same three classes build ResNet-50, every step of the paper's roadmap, the ConvNeXt family
and isotropic ConvNeXt; only the config differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ArchConfig
from .layers import DropPath, StridedPointwiseConv, make_activation, make_norm


class Block(nn.Module):
    """One residual block: three convs, each followed by an optional norm and activation.

    The config places them; the two ends of the roadmap (paper Fig. 4) are

    - ConvNeXt (``layout="dwconv_first"``, one norm, one activation)::

        x -> dwconv 7x7 -> norm -> pwconv1 1x1 (4x wider) -> GELU -> pwconv2 1x1 -> x gamma -> + x

    - ResNet-50 (``layout="bottleneck"``, a norm after every conv, activations after the first two convs
      and after the add; the inverted bottleneck is the same with a wider hidden width)::

        x -> pwconv1 1x1 -> norm1 -> ReLU -> dwconv 3x3 -> norm2 -> ReLU -> pwconv2 1x1 -> norm3 -> + shortcut(x) -> ReLU

    Module names follow the official ConvNeXt (``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``, ``gamma``);
    ResNet's bn1..bn3 become ``norm1``..``norm3``. Modules register in forward order, so ``parameters()``
    lists them as torchvision's ResNet-50 and timm's ConvNeXt do. Stride (in-block downsampling) goes on the
    spatial conv, as in torchvision's ResNet-50 (v1.5).
    """

    def __init__(self, cfg: ArchConfig, in_dim: int, dim: int, stride: int, drop_path: float) -> None:
        super().__init__()
        hidden = int(round(dim * cfg.mlp_ratio))
        self.dwconv_first = cfg.layout == "dwconv_first"
        self.single_norm = cfg.norms == "single"
        per_conv_acts = cfg.activations == "per_conv"
        k, bias = cfg.kernel_size, cfg.conv_bias

        def spatial_conv(width: int) -> nn.Conv2d:  # the k x k conv; depthwise from the roadmap's "depthwise" step on
            return nn.Conv2d(width, width, k, stride=stride, padding=k // 2, bias=bias,
                             groups=width if cfg.depthwise else 1)

        first_norm = "norm" if self.single_norm else "norm1"  # ConvNeXt's one norm, or ResNet's bn1
        # registered in forward order, each branch as its block computes
        if self.dwconv_first:
            self.dwconv = spatial_conv(in_dim)
            self.add_module(first_norm, make_norm(cfg.norm, in_dim))
            self.act1 = make_activation(cfg.activation) if per_conv_acts else nn.Identity()
            self.pwconv1 = nn.Conv2d(in_dim, hidden, 1, bias=bias)
        else:
            self.pwconv1 = nn.Conv2d(in_dim, hidden, 1, bias=bias)
            self.add_module(first_norm, make_norm(cfg.norm, hidden))
            self.act1 = make_activation(cfg.activation) if per_conv_acts else nn.Identity()
            self.dwconv = spatial_conv(hidden)
        self.norm2 = nn.Identity() if self.single_norm else make_norm(cfg.norm, hidden)
        self.act2 = make_activation(cfg.activation)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=bias)
        self.norm3 = nn.Identity() if self.single_norm else make_norm(cfg.norm, dim)
        self.gamma = (nn.Parameter(torch.full((dim,), float(cfg.layer_scale_init)))
                      if cfg.layer_scale_init is not None and cfg.layer_scale_init > 0 else None)
        self.drop_path = DropPath(drop_path)
        if in_dim != dim or stride != 1:
            # projection shortcut (ResNet "downsample"): 1x1 conv with the block's stride, then a norm
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", StridedPointwiseConv(in_dim, dim, stride, bias=bias))
            self.shortcut.add_module("norm", make_norm(cfg.norm, dim))
        else:
            self.shortcut = nn.Identity()
        self.act3 = make_activation(cfg.activation) if per_conv_acts else nn.Identity()

    @property
    def first_norm(self) -> nn.Module:
        """The norm after the first conv: ConvNeXt's only norm (``norm``) or ResNet's bn1 (``norm1``)."""
        return self.norm if self.single_norm else self.norm1

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch: everything but the shortcut and stochastic depth."""
        if self.dwconv_first:
            x = self.act1(self.first_norm(self.dwconv(x)))
            x = self.act2(self.norm2(self.pwconv1(x)))
        else:
            x = self.act1(self.first_norm(self.pwconv1(x)))
            x = self.act2(self.norm2(self.dwconv(x)))
        return self.project(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The last 1x1 conv back to the block's width, its norm (ResNet) and the layer scale (ConvNeXt)."""
        x = self.norm3(self.pwconv2(x))
        return x if self.gamma is None else x * self.gamma.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.drop_path(self.residual(x))
        return self.act3(x)


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
            self.add_module("conv", nn.Conv2d(cfg.in_chans, width, cfg.stem_kernel, stride=cfg.stem_patch_size,
                                              padding=cfg.stem_padding, bias=cfg.conv_bias))
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


def normalize_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
    """Validate stage indices for a backbone; negative indices count from the last stage."""
    if out_indices is None:
        return tuple(range(num_stages))
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    result = []
    for i in out_indices:
        if not isinstance(i, int) or not -num_stages <= i < num_stages:
            raise ValueError(
                f"out_indices {tuple(out_indices)} must be stage numbers in 0..{num_stages - 1} "
                f"(this model has {num_stages} stage(s)); e.g. out_indices=(0, 1, 2, 3)"
            )
        result.append(i % num_stages)
    if not result or len(set(result)) != len(result):
        raise ValueError(f"out_indices {tuple(out_indices)} must be non-empty and name each stage at most once")
    return tuple(sorted(result))


class ConvNeXt(nn.Module):
    """A configurable ConvNet: ResNet-50, every roadmap step, ConvNeXt and isotropic ConvNeXt.

    ``features_only=True`` makes it a backbone for detection/segmentation: ``forward`` returns the
    outputs of the stages in ``out_indices`` (strides 4/8/16/32 for the hierarchical models), each
    through its own norm as in the official ConvNeXt detection/segmentation backbones. It has no
    head and drops the stages after the last requested one (nothing unused for DDP to complain about).
    """

    def __init__(self, cfg: ArchConfig, features_only: bool = False, out_indices=None) -> None:
        super().__init__()
        if out_indices is not None and not features_only:
            raise ValueError("out_indices only applies to a backbone; pass features_only=True as well")
        self.cfg = cfg
        self.features_only = bool(features_only)
        self.out_indices = normalize_out_indices(out_indices, len(cfg.dims))
        self.num_classes = 0 if features_only else cfg.num_classes
        self.num_features = cfg.dims[-1]
        self.stem = Stem(cfg)
        # Stochastic depth rate grows linearly from 0 to drop_path_rate over all blocks.
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        num_built = self.out_indices[-1] + 1 if features_only else len(cfg.depths)
        stages, in_dim, start = [], cfg.stem_width, 0
        for i, depth in enumerate(cfg.depths[:num_built]):
            stages.append(Stage(cfg, i, in_dim, rates[start : start + depth]))
            in_dim, start = cfg.dims[i], start + depth
        self.stages = nn.Sequential(*stages)
        if features_only:
            # Official detection/segmentation backbones put a fresh LayerNorm on each output
            # (norm0..norm3). BatchNorm nets (ResNet-50 and the early roadmap steps) already end
            # their stages normalised-and-activated, so they hand stage outputs over as they are.
            self.feature_norms = nn.ModuleDict(
                {
                    str(i): make_norm("layernorm", cfg.dims[i]) if cfg.norm == "layernorm" else nn.Identity()
                    for i in self.out_indices
                }
            )
        else:
            self.head = Head(cfg, self.num_features)
        self.reset_parameters()

    @property
    def feature_info(self) -> list[dict]:
        """Channels and input-pixel reduction of each feature map (the backbone's outputs, or every
        stage for a classifier), as detection/segmentation necks expect them."""
        indices = self.out_indices
        return [
            {"index": i, "num_chs": self.cfg.dims[i], "reduction": self.cfg.stem_stride * 2 ** i,
             "module": f"stages.{i}"}
            for i in indices
        ]

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
        if not self.features_only:
            self._scale_head_init()

    def _scale_head_init(self) -> None:
        if isinstance(self.head.fc, nn.Linear) and self.cfg.head_init_scale != 1.0:
            with torch.no_grad():
                self.head.fc.weight.mul_(self.cfg.head_init_scale)
                self.head.fc.bias.mul_(self.cfg.head_init_scale)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none,
        forward then returns pooled features). The config follows, so a saved checkpoint says so."""
        if self.features_only:
            raise ValueError("a features_only backbone has no classifier; build it without features_only")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0 (0 = no classifier)")
        like = next(self.parameters())
        self.cfg = self.cfg.replace(num_classes=num_classes)
        self.num_classes = num_classes
        if num_classes == 0:
            self.head.fc = nn.Identity()
            return
        self.head.fc = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
        nn.init.trunc_normal_(self.head.fc.weight, std=0.02)
        nn.init.zeros_(self.head.fc.bias)
        self._scale_head_init()

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
        """Last (built) stage's feature map, before pooling and any norm."""
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stages in ``out_indices``, each through its feature norm (backbone only)."""
        if not self.features_only:
            raise ValueError("forward_stages needs a backbone; build the model with features_only=True")
        self._check_input(x)
        x = self.stem(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if str(i) in self.feature_norms:
                outputs.append(self.feature_norms[str(i)](x))
        return outputs

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, norm and classify a last-stage feature map; ``pre_logits=True`` stops before the classifier."""
        if self.features_only:
            raise ValueError("a features_only backbone has no head; build it without features_only")
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.forward_features(x))
