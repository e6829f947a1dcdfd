"""The optimizer (AdamW; SGD with momentum for ResNet's original recipe; Muon with AdamW, ``muon.py``) with its parameter groups
(no decay on norms, biases, layer-scale gammas; layer-wise lr decay) and the per-step schedule:
linear warmup, then cosine decay to ``min_lr``.

Schedule, for optimizer step t (0-based), W warmup steps, T total steps, peak lr L, floor m:
    t <  W:  L * (t + 1) / W
    t >= W:  m + (L - m) * (1 + cos(pi * (t - W) / (T - W))) / 2
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .muon import MatrixMuon, MuonWithAdamW, takes_muon


def lr_at(step: int, peak: float, floor: float, warmup_steps: int, total_steps: int) -> float:
    """The closed-form learning rate at optimizer step ``step`` (see module docstring)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights/biases, every bias and layer-scale gammas are 1-D; conv/linear weights are not."""
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("gamma")


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of a parameter for layer-wise lr decay: stem 0, block i (counted over all stages) i + 1,
    head len(blocks) + 1. A stage's downsample layer shares the id of the stage's first block."""
    if name.startswith("stem."):
        return 0
    if name.startswith("stages."):
        parts = name.split(".")
        stage = int(parts[1])
        first = sum(depths[:stage])
        if parts[2] == "blocks":
            return first + int(parts[3]) + 1
        return first + 1
    return sum(depths) + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, muon: bool = False) -> list[dict]:
    """Optimizer groups: (decay or not) x (layer scale), and with ``muon`` (Muon's or not). Each group carries
    ``lr_scale`` and ``muon``."""
    depths = tuple(model.cfg.depths)
    num_layers = sum(depths) + 2
    groups: dict[tuple[bool, bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not no_weight_decay(name, p)
        lid = layer_id(name, depths) if layer_decay < 1.0 else num_layers - 1
        by_muon = muon and takes_muon(name, p)
        key = (by_muon, decay, lid)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
                           "lr_scale": layer_decay ** (num_layers - 1 - lid), "muon": by_muon}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    layer_decay: float = 1.0, name: str = "adamw", momentum: float = 0.9,
                    muon_momentum: float = 0.95, muon_distributed: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, layer_decay, muon=name == "muon")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "muon":
        matrices, rest = [g for g in groups if g["muon"]], [g for g in groups if not g["muon"]]
        # Moonshot's update scaling: an update of AdamW's RMS, so both halves share the lr and weight decay
        muon = MatrixMuon(matrices, lr=lr, weight_decay=weight_decay, momentum=muon_momentum, nesterov=True,
                          adjust_lr_fn="match_rms_adamw", distributed=muon_distributed) if matrices else None
        return MuonWithAdamW(muon, _adamw(rest, lr, betas, eps) if rest else None)
    return _adamw(groups, lr, betas, eps)


def _adamw(groups: list[dict], lr: float, betas, eps: float) -> torch.optim.AdamW:
    # The fused kernel updates all parameters in one pass: ~4x faster than the default per-tensor
    # loop on CPU (25 vs 108 ms per step for ConvNeXt-T), the same algorithm. CPU and CUDA only.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


class WarmupCosine:
    """LambdaLR factor for ``lr_at``; a class (not a lambda) so the scheduler state stays plain data."""

    def __init__(self, peak: float, floor: float, warmup_steps: int, total_steps: int) -> None:
        self.peak, self.floor, self.warmup_steps, self.total_steps = peak, floor, warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        return lr_at(step, self.peak, self.floor, self.warmup_steps, self.total_steps) / self.peak


def build_scheduler(optimizer: torch.optim.Optimizer, peak: float, floor: float, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule; each group's lr is its ``lr_scale`` times ``lr_at``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(peak, floor, warmup_steps, total_steps))
