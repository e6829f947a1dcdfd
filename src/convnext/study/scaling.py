"""Scaling a roadmap step down to a CPU budget without touching the change the step makes.

Only widths shrink: every stage width and the stem width are multiplied by the same factor, so the
ratios between stages, the hidden width (dim * mlp_ratio), depthwise grouping, kernel sizes, norms,
activations, block layout, stem type, depths and downsampling all stay exactly as in the paper's step.
The multiplier must divide every width exactly; a rounded width would change the width-96 and inverted
steps by different relative amounts and blur the comparison between them.
"""

from __future__ import annotations

from typing import Any

from ..models.config import ArchConfig

# ArchConfig fields a width multiplier is allowed to change.
WIDTH_FIELDS = ("dims", "stem_dim")


def scale_config(cfg: ArchConfig, width_mult: float) -> ArchConfig:
    """``cfg`` with dims and stem width multiplied by ``width_mult``; nothing else changes."""
    return cfg.scale_width(width_mult)


def config_diff(a: ArchConfig, b: ArchConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (value in a, value in b)} for every ArchConfig field that differs."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}
