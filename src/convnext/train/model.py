"""The model a training config names: registered architecture + overrides + width scaling + data-given sizes."""

from __future__ import annotations

from typing import Any

from ..checkpoint import refuse_int8
from ..errors import UsageError
from ..models import ConvNeXt, get_entry
from ..weights import load_weights
from ..weights.io import resolve_weights_path
from .config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> ConvNeXt:
    """The model the config names: registered config + overrides + width scaling + data-given sizes."""
    entry = get_entry(cfg.model.name)
    arch = entry.config.replace(**cfg.model.overrides)
    if cfg.model.width_mult != 1.0:
        try:  # the one width rule, shared with the roadmap study: exact multiples only
            arch = arch.scale_width(cfg.model.width_mult)
        except ValueError as e:
            raise UsageError(f"model.width_mult: {e}") from None
    changes: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if "drop_path_rate" not in cfg.model.overrides:
        changes["drop_path_rate"] = cfg.reg.drop_path if cfg.reg.drop_path is not None else entry.paper_drop_path
    model = ConvNeXt(arch.replace(**changes))
    model.name = cfg.model.name
    return model


def load_init_weights(model: ConvNeXt, path: str) -> None:
    """``model.init``: start from the weights at ``path`` (fine-tuning)."""
    # Any layout load_weights knows (ours, official, timm, torchvision, HF); a different class count
    # keeps the fresh head and a 3-channel stem is adapted to in_chans, each with a warning.
    refuse_int8(resolve_weights_path(path))  # an INT8 file's tensors are observers and folded weights
    load_weights(model, path)


__all__ = ["build_model", "load_init_weights"]
