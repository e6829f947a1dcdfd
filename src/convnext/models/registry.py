"""Named models: the ConvNeXt family, isotropic ConvNeXt and every roadmap step."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from .config import ArchConfig
from .convnext import ConvNeXt
from .roadmap import ROADMAP


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ArchConfig
    description: str
    # Stochastic depth the paper trains this size with on ImageNet-1K (used by the 'paper' recipe).
    paper_drop_path: float = 0.1


def _family(depths, dims, **kw) -> ArchConfig:
    return ArchConfig(depths=depths, dims=dims, **kw)


def _isotropic(depth: int, dim: int) -> ArchConfig:
    # ViT-like: one stage, 16x16 patchify stem without a norm; the official isotropic models
    # train without layer scale.
    return ArchConfig(depths=(depth,), dims=(dim,), stem_patch_size=16, stem_norm=False, layer_scale_init=None)


_ENTRIES: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    if entry.name in _ENTRIES:
        raise ValueError(f"model {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry


for _name, _depths, _dims, _dp in [
    ("convnext_atto", (2, 2, 6, 2), (40, 80, 160, 320), 0.0),
    ("convnext_femto", (2, 2, 6, 2), (48, 96, 192, 384), 0.0),
    ("convnext_pico", (2, 2, 6, 2), (64, 128, 256, 512), 0.0),
    ("convnext_nano", (2, 2, 8, 2), (80, 160, 320, 640), 0.1),
    ("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    ("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    ("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    ("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
    ("convnext_xlarge", (3, 3, 27, 3), (256, 512, 1024, 2048), 0.5),
]:
    register(ModelEntry(_name, _family(_depths, _dims), f"ConvNeXt, depths {_depths}, dims {_dims}", _dp))

def _small_input(depths, dims) -> ArchConfig:
    # For 28-64 px images (Fashion-MNIST, CIFAR): a stride-2 patchify stem and one downsampling fewer than the
    # family (three stages), so the total stride is 8, not 32: a 32 px image leaves 16, 8 and 4 px maps (a 28 px
    # one 14, 7, 3) where the standard network would shrink it to 1x1 and its 7x7 kernels would see padding.
    # Layer scale starts at 1: at 1e-6 (ImageNet's 300 epochs) the blocks stay near identity for most of a
    # few-epoch run (Fashion-MNIST, one epoch: 78.3 % with 1e-6, 82.5 % with 1; docs/recipes.md).
    return ArchConfig(depths=depths, dims=dims, stem_patch_size=2, layer_scale_init=1.0)


# The `small` preset's model (`make demo`): the smallest small-input ConvNeXt, made cheaper per image and
# quicker to learn for a few minutes of CPU, each change measured on held-out Fashion-MNIST training images
# (docs/recipes.md): 5x5 depthwise kernels (the maps are 14, 7 and 3 px; ~1.2x faster, the same accuracy), MLP
# ratio 2 (~1.7x faster, -0.3 points per epoch) and BatchNorm instead of LayerNorm (+0.9 points after 4 epochs:
# the roadmap's "BN -> LN" step reversed, which on short runs learns faster).
register(ModelEntry(
    "convnext_micro_bn_small_input",
    _small_input((1, 1, 1), (32, 64, 128)).replace(kernel_size=5, mlp_ratio=2.0, norm="batchnorm"),
    "ConvNeXt for a few CPU minutes on 28-64 px images: convnext_micro_small_input with 5x5 depthwise convs, "
    "MLP ratio 2 and BatchNorm", 0.0))

for _name, _depths, _dims, _dp in [
    # the smallest LayerNorm one: the paper's block (7x7, MLP ratio 4) at the micro size
    ("convnext_micro_small_input", (1, 1, 1), (32, 64, 128), 0.0),
    # the family's first three stages
    ("convnext_atto_small_input", (2, 2, 6), (40, 80, 160), 0.0),
    ("convnext_femto_small_input", (2, 2, 6), (48, 96, 192), 0.0),
    ("convnext_pico_small_input", (2, 2, 6), (64, 128, 256), 0.0),
    ("convnext_nano_small_input", (2, 2, 8), (80, 160, 320), 0.1),
    ("convnext_tiny_small_input", (3, 3, 9), (96, 192, 384), 0.1),
]:
    register(ModelEntry(_name, _small_input(_depths, _dims),
                        f"ConvNeXt for 28-64 px images: stride-2 stem, 3 stages, depths {_depths}, dims {_dims}", _dp))

for _name, _depth, _dim, _dp in [
    ("convnext_isotropic_small", 18, 384, 0.1),
    ("convnext_isotropic_base", 18, 768, 0.2),
    ("convnext_isotropic_large", 36, 1024, 0.5),
]:
    register(ModelEntry(_name, _isotropic(_depth, _dim), f"isotropic ConvNeXt, {_depth} blocks of width {_dim}", _dp))

for _step in ROADMAP:
    register(ModelEntry(_step.name, _step.config, f"roadmap: {_step.change}", 0.1))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registration order."""
    return [n for n in _ENTRIES if fnmatch.fnmatch(n, pattern)]


def get_entry(name: str) -> ModelEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `convnext list` or convnext.list_models() to see the names"
        raise ValueError(f"unknown model {name!r}; {hint}") from None


def get_config(name: str, **overrides: Any) -> ArchConfig:
    return get_entry(name).config.replace(**overrides)


# What create_model(name, ...) users set freely without the name ceasing to describe the network:
# the head and input sizes and the regularisation rates.
FREE_FIELDS = ("num_classes", "in_chans", "drop_path_rate", "head_dropout", "head_init_scale")


def is_variant_of(cfg: ArchConfig, name: str) -> bool:
    """Whether ``cfg`` is the registered model ``name`` with only FREE_FIELDS changed."""
    try:
        base = get_config(name, **{f: getattr(cfg, f) for f in FREE_FIELDS})
    except ValueError:
        return False
    return base == cfg


def create_model(
    name: str | ArchConfig,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> ConvNeXt:
    """Build a freshly initialised model by registered name (or from an ArchConfig), with ArchConfig fields
    overridden. ``features_only=True`` builds a backbone returning the stage outputs in ``out_indices``.
    To start from a weights file, use ``convnext.create_model(name, pretrained=PATH)``.

    >>> model = create_model("convnext_tiny", num_classes=10, drop_path_rate=0.1)
    >>> backbone = create_model("convnext_tiny", features_only=True, out_indices=(1, 2, 3))
    """
    cfg = name.replace(**overrides) if isinstance(name, ArchConfig) else get_config(name, **overrides)
    return ConvNeXt(cfg, features_only=features_only, out_indices=out_indices)
