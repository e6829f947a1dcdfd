"""Scaling a roadmap step down to a CPU budget without touching the change the step makes.

Only widths shrink: every stage width and the stem width are multiplied by the same factor, so the
ratios between stages, the hidden width (dim * mlp_ratio), depthwise grouping, kernel sizes, norms,
activations, block layout, stem type, depths and downsampling all stay exactly as in the paper's step.
The multiplier must divide every width exactly; a rounded width would change the width-96 and inverted
steps by different relative amounts and blur the comparison between them.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ..models.config import ArchConfig

# ArchConfig fields a width multiplier is allowed to change.
WIDTH_FIELDS = ("dims", "stem_dim")


def _scale_width(width: int, mult: Fraction, what: str) -> int:
    scaled = width * mult
    if scaled.denominator != 1 or scaled < 1:
        raise ValueError(f"width multiplier {float(mult):g} turns {what}={width} into {float(scaled):g}, not a whole "
                         "number of channels; use a multiplier that divides every width, e.g. 1/2, 1/4, 1/8 or 1/16")
    return int(scaled)


def scale_config(cfg: ArchConfig, width_mult: float) -> ArchConfig:
    """``cfg`` with dims and stem width multiplied by ``width_mult``; nothing else changes."""
    mult = Fraction(width_mult).limit_denominator(1024)
    if mult <= 0:
        raise ValueError(f"width multiplier {width_mult} must be > 0")
    dims = tuple(_scale_width(d, mult, "dims") for d in cfg.dims)
    for d, full in zip(dims, cfg.dims):
        hidden = Fraction(d) * Fraction(cfg.mlp_ratio).limit_denominator(1024)
        if hidden.denominator != 1:
            raise ValueError(f"width multiplier {width_mult:g} gives stage width {d} (from {full}), whose hidden width "
                             f"{d} x mlp_ratio {cfg.mlp_ratio} is not whole; pick a multiplier that keeps it whole")
    stem_dim = None if cfg.stem_dim is None else _scale_width(cfg.stem_dim, mult, "stem_dim")
    return cfg.replace(dims=dims, stem_dim=stem_dim)


def config_diff(a: ArchConfig, b: ArchConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (value in a, value in b)} for every ArchConfig field that differs."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}
