"""Architecture summary of a model name or checkpoint: per-stage shape, params and GMACs, and where the FLOPs go.

Everything is measured, not derived from formulas: parameters from the built modules, feature-map
sizes from forward hooks, GMACs from ``count_flops(per_module=True)``. The model is built on the meta
device (shapes only), so even ConvNeXt-XL is summarised in a fraction of a second without weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import ModelInfo, check_weights_fit, load_model, read_info
from .errors import CheckpointError, UsageError
from .models import ArchConfig, ConvNeXt, count_flops, count_params, get_entry

# Where the FLOPs go, in the paper's vocabulary; every conv/linear lands in exactly one of these.
CATEGORIES = ("stem", "depthwise conv", "dense spatial conv", "pointwise (1x1) conv", "downsample layer",
              "shortcut projection", "head")


@dataclass
class StageRow:
    name: str
    blocks: int
    channels: int
    resolution: tuple[int, int]
    params: int
    gmacs: float


@dataclass
class ModelReport:
    name: str | None
    source: str
    config: ArchConfig
    input_size: tuple[int, int, int]
    params: int
    gmacs: float
    stages: list[StageRow] = field(default_factory=list)
    # category -> (GMACs, params)
    breakdown: dict[str, tuple[float, int]] = field(default_factory=dict)
    checkpoint: ModelInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "input_size": list(self.input_size),
            "params": self.params,
            "gmacs": self.gmacs,
            "config": self.config.to_dict(),
            "stages": [dict(vars(s), resolution=list(s.resolution)) for s in self.stages],
            "flops_breakdown": {k: {"gmacs": g, "params": p, "share": g / self.gmacs if self.gmacs else 0.0}
                                for k, (g, p) in self.breakdown.items()},
        }
        if self.checkpoint is not None:
            d["class_names"] = self.checkpoint.class_names
            d["preprocess"] = self.checkpoint.preprocess.to_dict()
            d["train"] = self.checkpoint.train
        return d


def _category(name: str, module: nn.Module) -> str | None:
    """The FLOP category of one conv/linear, from its place in the network."""
    parts = name.split(".")
    if parts[0] == "stem":
        return "stem"
    if parts[0] == "head":
        return "head"
    if "downsample" in parts:
        return "downsample layer"
    if "shortcut" in parts:
        return "shortcut projection"
    if parts[-1] == "dwconv" and isinstance(module, nn.Conv2d):
        return "depthwise conv" if module.groups == module.in_channels > 1 else "dense spatial conv"
    if parts[-1] in ("pwconv1", "pwconv2"):
        return "pointwise (1x1) conv"
    return None


def _resolve(source: str | os.PathLike, model_name: str | None,
             arch: dict | None = None) -> tuple[ArchConfig, str | None, ModelInfo | None]:
    text = os.fspath(source)
    if Path(text).exists():
        try:
            info = read_info(text)  # metadata only: no weights read
        except CheckpointError:
            pass
        else:
            check_weights_fit(text, info)  # the header's shapes: a summary of a model the file cannot load is wrong
            return info.config, info.name, info
        # Not our checkpoint: load_model knows the foreign layouts (the weights tell num_classes / in_chans)
        # and, without model_name, says which --model the file needs.
        _, info = load_model(text, model_name=model_name, **(arch or {}))
        return info.config, info.name or model_name, info
    if text.endswith((".safetensors", ".pth", ".pt", ".bin")) or os.sep in text:
        raise FileNotFoundError(f"{text}: no such checkpoint file; check the path (or pass a model name)")
    return get_entry(text).config.replace(**(arch or {})), text, None


def describe(source: str | os.PathLike, size: int | None = None, model_name: str | None = None,
             arch: dict | None = None) -> ModelReport:
    """Summarise a registered model name or a checkpoint at ``size`` (default: its input size, else 224)."""
    cfg, name, info = _resolve(source, model_name, arch)
    if size is None:
        size = info.preprocess.input_size if info is not None else 224
    if size < cfg.total_stride:
        raise UsageError(f"--size {size} is smaller than the network's total stride {cfg.total_stride}; "
                         f"use --size {cfg.total_stride} or more")
    input_size = (cfg.in_chans, size, size)
    with torch.device("meta"):
        model = ConvNeXt(cfg)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, key=key: shapes.__setitem__(key, tuple(out.shape)))
             for key, m in [("stem", model.stem)] + [(f"stage{i}", s) for i, s in enumerate(model.stages)]]
    try:
        total, per_module = count_flops(model, input_size, per_module=True)
    finally:
        for h in hooks:
            h.remove()
    # count_flops names modules "<RootClass>.<path>"; strip the root to get named_modules() paths
    per = {k.split(".", 1)[1]: v for k, v in per_module.items() if "." in k}

    def flops(prefix: str) -> float:
        return per.get(prefix, 0.0)

    rows = [StageRow("stem", 0, shapes["stem"][1], shapes["stem"][2:], count_params(model.stem), flops("stem"))]
    for i, stage in enumerate(model.stages):
        shape = shapes[f"stage{i}"]
        rows.append(StageRow(f"stage {i + 1}", len(stage.blocks), shape[1], shape[2:], count_params(stage),
                             flops(f"stages.{i}")))
    rows.append(StageRow("head", 0, cfg.num_classes, (1, 1), count_params(model.head), flops("head")))

    breakdown = {c: (0.0, 0) for c in CATEGORIES}
    for mname, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            cat = _category(mname, module)
            if cat is None:
                raise RuntimeError(f"info: layer {mname} fits no FLOP category; extend convnext.info._category")
            g, p = breakdown[cat]
            breakdown[cat] = (g + per.get(mname, 0.0), p + count_params(module))
    breakdown = {k: v for k, v in breakdown.items() if v[0] > 0 or v[1] > 0}
    return ModelReport(name, os.fspath(source), cfg, input_size, count_params(model), total, rows, breakdown, info)


def _table(header: list[str], body: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


def format_report(r: ModelReport) -> str:
    c, h, w = r.input_size
    # tiny models at small inputs: MMACs keep three significant digits where GMACs would print 0.000
    unit, scale = ("GMACs", 1.0) if r.gmacs >= 0.1 else ("MMACs", 1e3)
    lines = [
        f"model: {r.name or '(unnamed config)'}" + (f"  [{r.source}]" if r.source != r.name else ""),
        f"input: {c}x{h}x{w}   params: {r.params:,} ({r.params / 1e6:.2f} M)   {unit}: {r.gmacs * scale:.3f}",
        f"config: depths {list(r.config.depths)}, dims {list(r.config.dims)}, kernel {r.config.kernel_size}, "
        f"{r.config.norm}, {r.config.activation}, stem {r.config.stem}, downsample {r.config.downsample}, "
        f"{r.config.num_classes} classes",
    ]
    if r.checkpoint is not None:
        pre, names = r.checkpoint.preprocess, r.checkpoint.class_names
        shown = ", ".join(names[:5]) + (", ..." if names and len(names) > 5 else "") if names else "none stored"
        lines.append(f"classes: {shown}")
        lines.append(f"preprocess: {pre.input_size}px, crop {pre.crop_ratio}, {pre.interpolation}, "
                     f"mean {list(pre.mean)}, std {list(pre.std)}")
        if r.checkpoint.train:
            lines.append("train: " + ", ".join(f"{k}={v}" for k, v in r.checkpoint.train.items()))
    lines.append("")
    body = [[s.name, str(s.blocks) if s.blocks else "-", str(s.channels), f"{s.resolution[0]}x{s.resolution[1]}",
             f"{s.params:,}", f"{s.gmacs * scale:.3f}", f"{100 * s.gmacs / r.gmacs:.1f}%" if r.gmacs else "-"]
            for s in r.stages]
    lines += _table(["part", "blocks", "channels", "output", "params", unit, "share"], body)
    lines.append("")
    body = [[k, f"{g * scale:.3f}", f"{100 * g / r.gmacs:.1f}%" if r.gmacs else "-", f"{p:,}"]
            for k, (g, p) in sorted(r.breakdown.items(), key=lambda kv: -kv[1][0])]
    lines += _table(["where the FLOPs go", unit, "share", "params"], body)
    return "\n".join(lines)


__all__ = ["CATEGORIES", "ModelReport", "StageRow", "describe", "format_report"]
