"""ArchConfig: every architectural knob of the paper's modernization roadmap as plain data.

One config describes ResNet-50, every intermediate network of the roadmap (paper Fig. 2),
the ConvNeXt family and the isotropic ConvNeXt. `models/convnext.py` turns it into modules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..errors import check_choice

STEM_TYPES = ("resnet", "patchify")
BLOCK_LAYOUTS = ("bottleneck", "dwconv_first")
COUNT_CHOICES = ("per_conv", "single")
NORM_TYPES = ("batchnorm", "layernorm")
ACTIVATIONS = ("relu", "gelu")
DOWNSAMPLE_TYPES = ("in_block", "separate")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    check_choice(f"ArchConfig.{name}", value, allowed)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_type(name: str, value: Any, annotation: str) -> None:
    """A field's value has its annotated kind (annotations are strings here: ``from __future__``). Lists of
    numbers from YAML become int tuples only when every entry is a whole number: 8.5 channels is an error,
    not 8."""
    if value is None and "None" in annotation:
        return
    base = annotation.split("|")[0].strip()
    ok = {
        "int": _is_int(value),
        "float": (_is_int(value) or isinstance(value, float)) and math.isfinite(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "tuple[int, ...]": isinstance(value, (list, tuple)) and all(_is_int(v) for v in value),
    }.get(base, True)
    if not ok:
        kind = {"tuple[int, ...]": "a list of whole numbers, e.g. [2, 2, 6, 2]", "int": "a whole number",
                "float": "a finite number", "bool": "true or false", "str": "a name"}[base]
        raise ValueError(f"ArchConfig.{name}={value!r} must be {kind}")


@dataclass(frozen=True)
class ArchConfig:
    """The architecture of one network.

    Block anatomy: a residual block has one spatial k x k conv (``dwconv``) and two 1x1 convs
    (``pwconv1``: dim -> hidden, ``pwconv2``: hidden -> dim), hidden = dim * mlp_ratio.
    ``layout='bottleneck'`` orders them pwconv1 -> dwconv -> pwconv2 (ResNet, and the paper's
    inverted bottleneck when mlp_ratio > 1); ``layout='dwconv_first'`` is the paper's "move up
    depthwise conv": dwconv -> pwconv1 -> pwconv2. ``dwconv`` is a full conv unless ``depthwise``.
    """

    depths: tuple[int, ...] = (3, 3, 9, 3)
    # Residual-stream width of each stage (the width the shortcut carries).
    dims: tuple[int, ...] = (96, 192, 384, 768)
    mlp_ratio: float = 4.0
    layout: str = "dwconv_first"
    depthwise: bool = True
    kernel_size: int = 7

    stem: str = "patchify"
    # Output channels of the stem; None means dims[0].
    stem_dim: int | None = None
    # Patch size for the patchify stem (4 in hierarchical ConvNeXt, 16 in isotropic).
    stem_patch_size: int = 4
    # Kernel of the patchify stem's conv; None means the patch size (non-overlapping patches, the paper's). A larger
    # kernel at the same stride sees overlapping patches (padded to keep the size / patch output), which costs
    # little in a 1-3 channel stem and lets each output pixel see its neighbours' pixels.
    stem_kernel_size: int | None = None
    stem_norm: bool = True

    norm: str = "layernorm"
    norms: str = "single"  # "per_conv": a norm after each conv (ResNet); "single": after the first conv only
    activation: str = "gelu"
    activations: str = "single"  # "per_conv": after every conv but the last and after the add; "single": between the 1x1 convs
    conv_bias: bool = True

    downsample: str = "separate"  # "in_block": strided conv + projection shortcut; "separate": norm + 2x2 s2 conv
    head_norm: bool = True

    layer_scale_init: float | None = 1e-6
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    head_init_scale: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), str(f.type))
        # Lists from YAML/JSON become tuples so the config stays hashable and comparable.
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        _choice("stem", self.stem, STEM_TYPES)
        _choice("layout", self.layout, BLOCK_LAYOUTS)
        _choice("norms", self.norms, COUNT_CHOICES)
        _choice("activations", self.activations, COUNT_CHOICES)
        _choice("norm", self.norm, NORM_TYPES)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("downsample", self.downsample, DOWNSAMPLE_TYPES)
        if not self.depths or len(self.depths) != len(self.dims):
            raise ValueError(
                f"ArchConfig.depths {self.depths} and dims {self.dims} must be non-empty and the same length"
            )
        if any(d < 1 for d in self.depths) or any(d < 1 for d in self.dims):
            raise ValueError(f"ArchConfig.depths {self.depths} and dims {self.dims} must all be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"ArchConfig.kernel_size={self.kernel_size} must be a positive odd number")
        if self.mlp_ratio <= 0:
            raise ValueError(f"ArchConfig.mlp_ratio={self.mlp_ratio} must be > 0")
        if self.num_classes < 0:
            raise ValueError(f"ArchConfig.num_classes={self.num_classes} must be >= 0 (0 = no classifier)")
        if self.in_chans < 1:
            raise ValueError(f"ArchConfig.in_chans={self.in_chans} must be >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"ArchConfig.drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"ArchConfig.head_dropout={self.head_dropout} must be in [0, 1)")
        if self.stem_patch_size < 1:
            raise ValueError(f"ArchConfig.stem_patch_size={self.stem_patch_size} must be >= 1")
        if self.stem_kernel_size is not None:
            k, p = self.stem_kernel_size, self.stem_patch_size
            if self.stem != "patchify":
                raise ValueError(f"ArchConfig.stem_kernel_size={k} applies to the patchify stem only (stem={self.stem!r})")
            if k < p or (p == 1 and k % 2 == 0):
                raise ValueError(f"ArchConfig.stem_kernel_size={k} must be at least stem_patch_size={p}"
                                 + (" and odd (a patch size of 1 has no padding that keeps an even kernel centred)"
                                    if p == 1 else ""))
        if self.layout == "dwconv_first" and not self.depthwise:
            raise ValueError("ArchConfig.layout='dwconv_first' needs depthwise=True (a full conv cannot change "
                             "width before the 1x1 convs in this design)")

    @property
    def stem_width(self) -> int:
        return self.stem_dim if self.stem_dim is not None else self.dims[0]

    @property
    def stem_kernel(self) -> int:
        """Kernel of the patchify stem's conv: stem_kernel_size, or the patch size when it is None."""
        return self.stem_kernel_size or self.stem_patch_size

    @property
    def stem_padding(self) -> int:
        """Padding of the patchify stem's conv: the least that keeps its output at input / patch size."""
        return (self.stem_kernel - self.stem_patch_size + 1) // 2

    @property
    def stem_stride(self) -> int:
        return 4 if self.stem == "resnet" else self.stem_patch_size

    @property
    def total_stride(self) -> int:
        """Input pixels per output feature-map pixel."""
        return self.stem_stride * 2 ** (len(self.dims) - 1)

    def input_size_problem(self, size: int) -> str | None:
        """Why a ``size`` x ``size`` input does not fit this network, or None when it does: the stem's patches
        must tile it, and every downsampling must still have a map to halve."""
        smallest = self.total_stride
        if size < smallest:
            return (f"{size} is smaller than the network's total stride {smallest} (a stem of stride "
                    f"{self.stem_stride}, {len(self.dims) - 1} downsamplings); the smallest valid size is {smallest}")
        if self.stem == "patchify" and size % self.stem_patch_size:
            below = size - size % self.stem_patch_size
            nearest = [s for s in (below, below + self.stem_patch_size) if s >= smallest]
            return (f"{size} is not a multiple of the stem's patch size {self.stem_patch_size}; "
                    f"use {' or '.join(map(str, nearest))}")
        return None

    def scale_width(self, width_mult: float) -> "ArchConfig":
        """This config with every width (stage dims and the stem) multiplied by ``width_mult``; nothing else
        changes, so ratios between stages, the hidden width (dim * mlp_ratio), kernels, norms and depths stay.

        The multiplier must give whole channel counts everywhere: a rounded width would change different
        networks (e.g. the roadmap's width-96 and inverted steps) by different relative amounts.
        """
        mult = Fraction(width_mult).limit_denominator(1024)
        if mult <= 0:
            raise ValueError(f"width multiplier {width_mult} must be > 0")

        def scaled(width: int, what: str) -> int:
            w = width * mult
            if w.denominator != 1 or w < 1:
                raise ValueError(f"width multiplier {float(mult):g} turns {what}={width} into {float(w):g}, not a "
                                 "whole number of channels; use a multiplier that divides every width, e.g. 1/2, "
                                 "1/4, 1/8 or 1/16")
            return int(w)

        dims = tuple(scaled(d, "dims") for d in self.dims)
        for d, full in zip(dims, self.dims):
            if (Fraction(d) * Fraction(self.mlp_ratio).limit_denominator(1024)).denominator != 1:
                raise ValueError(f"width multiplier {width_mult:g} gives stage width {d} (from {full}), whose hidden "
                                 f"width {d} x mlp_ratio {self.mlp_ratio} is not whole; pick a multiplier that keeps "
                                 "it whole")
        stem_dim = None if self.stem_dim is None else scaled(self.stem_dim, "stem_dim")
        return self.replace(dims=dims, stem_dim=stem_dim)

    def replace(self, **changes: Any) -> "ArchConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown ArchConfig field(s) {unknown}; valid fields: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["depths"] = list(self.depths)
        d["dims"] = list(self.dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchConfig":
        return cls().replace(**d)


__all__ = ["ArchConfig"]
