"""Which models each library's ConvNeXt can build, so a file written in its layout is one it can use.

The layouts rename keys (``layouts.py``); the numbers of two architectures can share every key and every shape and
still mean different things: a ReLU network's weights load into GELU blocks, and an overlapping 4x4 stem at stride 2
loads into a 4x4 patchify stem at stride 4, and both then compute something else without an error. Others fail only
on the user's side, at load time (a 5x5 kernel into a 7x7 one). So a model is exported in a library's layout only
when that library's constructor has arguments that build it. What each builds, from its constructor's arguments:

- official (facebookresearch/ConvNeXt): ``ConvNeXt(in_chans, depths, dims, layer_scale_init_value, ...)``, four
  stages with a 4x4 patchify stem; ``ConvNeXtIsotropic(in_chans, depth, dim, layer_scale_init_value, ...)``, a 16x16
  stem without a norm and one run of blocks. 7x7 depthwise convs, MLP ratio 4, GELU.
- torchvision: ``ConvNeXt(block_setting, layer_scale, ...)``, any number of stages, a 4x4 stem on 3 channels, layer
  scale in every block. 7x7, MLP ratio 4, GELU.
- timm: ``ConvNeXt(in_chans, depths, dims, kernel_sizes, ls_init_value, patch_size, act_layer, ...)``: four stages
  behind a 4x4 stem (other patch sizes change its stage layout), any kernel size, GELU or ReLU. MLP ratio 4.
- hf (transformers' ``ConvNextConfig``): ``num_channels, patch_size, num_stages, hidden_sizes, depths, hidden_act,
  layer_scale_init_value``. 7x7, MLP ratio 4.

All of them: the paper's block (depthwise conv first, one LayerNorm, one activation, conv biases), a separate
downsampling layer (LayerNorm, 2x2 conv at stride 2), a LayerNorm before the head, a stem as wide as the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models.config import ArchConfig

# ArchConfig fields every library's ConvNeXt has fixed to the paper's values.
_PAPER_BLOCK: dict[str, tuple[Any, ...]] = {
    "stem": ("patchify",), "layout": ("dwconv_first",), "depthwise": (True,), "norm": ("layernorm",),
    "norms": ("single",), "activations": ("single",), "conv_bias": (True,), "downsample": ("separate",),
    "head_norm": (True,),
}


@dataclass(frozen=True)
class Library:
    title: str
    # ArchConfig fields this library builds only at these values (besides the paper's block)
    fixed: dict[str, tuple[Any, ...]]
    # the one number of stages of its hierarchical model; None: any
    stages: int | None = None
    # fields its isotropic model fixes; None: it has no isotropic model
    isotropic: dict[str, tuple[Any, ...]] | None = None
    needs_layer_scale: bool = False
    in_chans: tuple[int, ...] | None = None  # None: any
    extra: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # fixed for the hierarchical model only


_PAPER_KERNEL_MLP = {"kernel_size": (7,), "mlp_ratio": (4.0,)}

LIBRARIES: dict[str, Library] = {
    "official": Library("the official ConvNeXt", {**_PAPER_KERNEL_MLP, "activation": ("gelu",)}, stages=4,
                        isotropic={"stem_patch_size": (16,)}, extra={"stem_patch_size": (4,)}),
    "torchvision": Library("torchvision's ConvNeXt", {**_PAPER_KERNEL_MLP, "activation": ("gelu",)},
                           needs_layer_scale=True, in_chans=(3,), extra={"stem_patch_size": (4,)}),
    # timm lays its stages out by the stem's stride: a patch size of 2 adds a downsampling to its first stage, and
    # one whose stride reaches 32 before the last stage turns the later downsamplings into dilations; so four
    # stages behind a 4x4 stem, as in every timm ConvNeXt
    "timm": Library("timm's ConvNeXt", {"mlp_ratio": (4.0,), "activation": ("gelu", "relu")}, stages=4,
                    extra={"stem_patch_size": (4,)}),
    "hf": Library("transformers' ConvNeXt", {**_PAPER_KERNEL_MLP, "activation": ("gelu", "relu")}),
}


def _allowed(values: tuple[Any, ...]) -> str:
    return " or ".join(repr(v) for v in values)


def why_unbuildable(cfg: ArchConfig, layout: str) -> str | None:
    """Why ``layout``'s library cannot build a model of ``cfg`` (one line), or None when it can (and for our own
    layout, which holds every model)."""
    lib = LIBRARIES.get(layout)
    if lib is None:
        return None
    isotropic = len(cfg.depths) == 1 and not cfg.stem_norm
    wants = {**_PAPER_BLOCK, **lib.fixed}
    if isotropic:
        if lib.isotropic is None:
            return f"{lib.title} has no isotropic model (one stage, a stem without a norm)"
        wants.update(lib.isotropic)
    else:
        if lib.stages is not None and len(cfg.depths) != lib.stages:
            return f"{lib.title} builds {lib.stages} stages, this model has {len(cfg.depths)}"
        wants.update({"stem_norm": (True,), **lib.extra})
    for name, values in wants.items():
        value = getattr(cfg, name)
        if value not in values:
            return f"{lib.title} builds ArchConfig.{name}={_allowed(values)}, this model has {value!r}"
    if cfg.stem_kernel != cfg.stem_patch_size:
        return (f"{lib.title}'s stem is a patchify conv (kernel = stride = {cfg.stem_patch_size}), this model's "
                f"overlaps (ArchConfig.stem_kernel_size={cfg.stem_kernel_size})")
    if cfg.stem_dim not in (None, cfg.dims[0]):
        return f"{lib.title}'s stem is as wide as its first stage ({cfg.dims[0]}), this model's is {cfg.stem_dim}"
    if lib.needs_layer_scale and not cfg.layer_scale_init:
        return f"{lib.title} has layer scale in every block, this model has none (ArchConfig.layer_scale_init)"
    if lib.in_chans is not None and cfg.in_chans not in lib.in_chans:
        return f"{lib.title}'s stem takes {_allowed(lib.in_chans)} input channels, this model's {cfg.in_chans}"
    return None


__all__ = ["LIBRARIES", "why_unbuildable"]
