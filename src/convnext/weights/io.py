"""Reading weights from any supported layout into our models, and writing them back out.

Files are read with safetensors or ``torch.load(weights_only=True)``, nothing else: a pickle that
asks to import or call anything beyond tensors and containers is refused before it can run.
Every failure is a ``CheckpointError`` whose message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, one_line
from ..files import atomic_write
from ..models import get_config, list_models
from .layouts import LAYOUTS, LayoutError, detect_layout, from_ours, to_ours
from .pickles import read_pickle

log = logging.getLogger(__name__)

# Containers the released checkpoints wrap their state dict in: official {"model": ...},
# timm/mmseg/Lightning {"state_dict": ...}, plain training scripts {"model_state_dict": ...}.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
# Prefixes added by DistributedDataParallel, torch.compile and Lightning modules.
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")
# timm builds these with 1x1-conv MLPs (conv_mlp=True); the rest of the family uses Linear layers.
_TIMM_CONV_MLP_MODELS = ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class Weights:
    """A state dict already renamed into our layout, plus where it came from."""

    state: dict[str, torch.Tensor]
    layout: str
    source: str
    # keys of the original that no rule of the detected layout maps
    unmapped: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """What ``load_weights`` did: the layout it recognised and everything it did not copy as-is."""

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # Content sniffing for renamed files: an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


# Exported models (``convnext export`` and the exporters it calls) hold a compiled graph, not a state dict to load
# into our classes; each kind with the runtime that runs it. Told apart before any reader opens the file, so the user
# hears what the file is rather than a pickle reader's complaint about it.
_EXPORTS = {"onnx": ("an ONNX model", "onnxruntime"), "openvino": ("an OpenVINO IR model", "OpenVINO"),
            "torchscript": ("a TorchScript archive", "torch.jit.load"),
            "torch-export": ("a torch.export program", "torch.export.load")}


def _export_kind(path: Path) -> str | None:
    """Which exported-model format ``path`` is (a key of ``_EXPORTS``), or None for anything else."""
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".xml":
        return "openvino"
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        # every record of a torch zip sits under one root folder: TorchScript adds its code and constants beside
        # the tensors, a .pt2 program an archive_format record; a torch.save checkpoint has neither
        entries = {name.split("/", 1)[1] for name in z.namelist() if "/" in name}
    if "constants.pkl" in entries and any(e.startswith("code/") for e in entries):
        return "torchscript"
    return "torch-export" if "archive_format" in entries else None


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: the file itself, or the model file inside a run/model directory."""
    p = Path(path)
    if p.is_dir():
        # ours (a model folder or a run's best/last); a foreign model folder's single weights file
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt", "best.safetensors",
                     "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: directory holds no model.safetensors; pass the checkpoint file itself")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint file; check the path")
    return p


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # noqa: BLE001 - every parse failure means the same to the user
        raise CheckpointError(
            f"{p}: not a readable safetensors file ({one_line(e)}); it is truncated or corrupt, "
            "re-download or re-export it"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint container and strip wrapper prefixes."""
    for _ in range(3):  # e.g. {"state_dict": {"module.x": ...}} or {"model": {"model": ...}}
        if _is_state_dict(obj):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not _is_state_dict(obj):
        top = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{source}: holds no state dict of tensors (found {top}); pass a weights file "
            "(.pth/.pt/.bin/.safetensors) saved from a model's state_dict()"
        )
    state = dict(obj)
    if any(k.startswith("backbone.") for k in state):
        # detection/segmentation checkpoints (mmdet/mmseg): the backbone is what maps onto us
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def read_weights(src: str | os.PathLike | Mapping[str, torch.Tensor]) -> Weights:
    """Read a file (or take a state dict), recognise its layout and rename it into ours."""
    if isinstance(src, Weights):
        return src
    if isinstance(src, Mapping):
        source, raw = "state dict", _unwrap(src, "state dict")
    else:
        p = resolve_weights_path(src)
        source = str(p)
        if p.stat().st_size == 0:
            raise CheckpointError(
                f"{p}: file is empty (0 bytes), probably an interrupted download or copy; re-download or re-export it"
            )
        kind = _export_kind(p)
        if kind is not None:
            what, runtime = _EXPORTS[kind]
            raise CheckpointError(f"{p}: {what}, not a weights checkpoint; pass the checkpoint it was exported from "
                                  f"(.safetensors, .pth/.pt/.bin), or run the file with {runtime}")
        raw = _unwrap(_read_safetensors(p) if _is_safetensors(p) else read_pickle(p), source)
    layout = detect_layout(raw)
    if layout is None:
        raise CheckpointError(
            f"{source}: weights are in no ConvNeXt layout convnext knows (first keys: {', '.join(list(raw)[:3])}); "
            f"expected weights of ConvNeXt in one of the layouts {', '.join(LAYOUTS)}"
        )
    state, unmapped = to_ours(raw, layout)
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{source}: weights hold NaN/Inf values (first: {bad}); they come from a diverged "
                              "run and cannot be used: load an earlier checkpoint")
    return Weights(state, layout, source, unmapped)


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose floating-point tensor holds a NaN or Inf, or None."""
    return next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def describe_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a state dict in our layout says about its network: depths, dims, classes, input channels."""
    blocks: dict[int, set[int]] = {}
    for k in state:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    depths = tuple(len(blocks[s]) for s in sorted(blocks))
    dims = []
    for s in sorted(blocks):
        last = max(blocks[s])
        w = state.get(f"stages.{s}.blocks.{last}.pwconv2.weight")
        dims.append(int(w.shape[0]) if w is not None else None)
    d: dict[str, Any] = {"depths": depths, "dims": tuple(dims)}
    if "head.fc.weight" in state:
        d["num_classes"] = int(state["head.fc.weight"].shape[0])
    if "stem.conv.weight" in state:
        d["in_chans"] = int(state["stem.conv.weight"].shape[1])
    return d


def guess_model_name(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first registered model whose depths and dims match the weights, if any."""
    arch = describe_architecture(state)
    for name in list_models():
        cfg = get_config(name)
        if cfg.depths == arch["depths"] and cfg.dims == arch["dims"]:
            return name
    return None


def _architecture_hint(state: Mapping[str, torch.Tensor]) -> str:
    arch = describe_architecture(state)
    if not arch["depths"]:
        return ""
    name = guess_model_name(state)
    what = f"{name} " if name else ""
    return f"; the weights look like {what}(depths {arch['depths']}, dims {arch['dims']})"


def _adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a stem kernel trained on RGB to ``in_chans`` input channels.

    1 channel: the sum of the RGB kernels, so a grey image replicated to RGB and the same image fed
    as one channel give the same stem output. Other counts: the RGB kernels repeated cyclically and
    scaled by 3/in_chans, which keeps the stem's output scale for inputs of similar statistics.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    c = weight.shape[1]
    repeats = -(-in_chans // c)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (c / in_chans)


def _load(model: nn.Module, weights: Weights, strict: bool) -> LoadReport:
    report = LoadReport(layout=weights.layout, unexpected=list(weights.unmapped))
    state = dict(weights.state)
    own = model.state_dict()
    if getattr(model, "features_only", False):
        # A backbone keeps no head, no stages after its last output and no norm for a stage it does not
        # output; detection/segmentation checkpoints carry all of them (official: norm0..norm3 always).
        built = len(model.stages)
        for k in list(state):
            m = re.match(r"stages\.(\d+)\.", k)
            if (k.startswith("head.") or (m and int(m.group(1)) >= built)
                    or (k.startswith("feature_norms.") and k not in own)):
                report.ignored.append(k)
                del state[k]
    elif "head.fc.weight" not in own:
        # num_classes=0: a feature extractor, the checkpoint's classifier is not wanted
        for k in ("head.fc.weight", "head.fc.bias"):
            if k in state:
                report.ignored.append(k)
                del state[k]

    fitted: dict[str, torch.Tensor] = {}
    # model order (safetensors files come sorted by name), so errors name the first layer that differs
    order = {k: n for n, k in enumerate(own)}
    for k in sorted(state, key=lambda k: order.get(k, len(order))):
        v = state[k]
        if k not in own:
            report.unexpected.append(k)
            continue
        target = own[k].shape
        if v.shape == target:
            fitted[k] = v
        elif k.startswith("head.fc."):
            report.reinitialized.append(k)
        elif k == "stem.conv.weight" and v.ndim == 4 and v.shape[0] == target[0] and v.shape[2:] == target[2:]:
            fitted[k] = _adapt_in_chans(v, target[1])
            report.adapted.append(k)
        else:
            raise CheckpointError(
                f"{weights.source}: parameter {k} has shape {tuple(v.shape)} in the checkpoint but "
                f"{tuple(target)} in the model ({weights.layout} layout){_architecture_hint(weights.state)}; "
                "build the model the weights were made for (--model NAME / create_model(NAME))"
            )
    report.missing = [k for k in own if k not in fitted and k not in report.reinitialized]
    # A classifier-less checkpoint (backbone, transformers ConvNextModel) leaves the head fresh,
    # exactly as fine-tuning from it would; a backbone's feature norms start fresh as in the official
    # detection/segmentation code.
    fresh = [k for k in report.missing if k.startswith(("head.fc.", "feature_norms."))]
    report.reinitialized += [k for k in fresh if k.startswith("head.fc.")]
    report.missing = [k for k in report.missing if k not in fresh]
    if strict and (report.missing or report.unexpected):
        parts = []
        if report.missing:
            parts.append(f"missing {len(report.missing)} (first: {', '.join(report.missing[:3])})")
        if report.unexpected:
            parts.append(f"unexpected {len(report.unexpected)} (first: {', '.join(report.unexpected[:3])})")
        raise CheckpointError(
            f"{weights.source}: weights ({weights.layout} layout) do not fit this model: {'; '.join(parts)}"
            f"{_architecture_hint(weights.state)}; build the model the weights were made for (--model NAME)"
        )
    with torch.no_grad():
        model.load_state_dict(fitted, strict=False)
    if report.reinitialized:
        n_ckpt = weights.state.get("head.fc.weight")
        was = f"{n_ckpt.shape[0]} classes" if n_ckpt is not None else "no classifier"
        warnings.warn(
            f"{weights.source}: checkpoint has {was}, the model {getattr(model, 'num_classes', '?')}: "
            "head.fc keeps its fresh initialisation; fine-tune it before use",
            stacklevel=3,
        )
    if report.adapted:
        warnings.warn(
            f"{weights.source}: stem kernel adapted from {weights.state['stem.conv.weight'].shape[1]} to "
            f"{own['stem.conv.weight'].shape[1]} input channel(s) "
            "(summed for 1 channel, cyclic repeat scaled otherwise)",
            stacklevel=3,
        )
    if report.ignored or fresh:
        log.info("%s: ignored %d key(s) the model has no place for, %d fresh feature-norm key(s)",
                 weights.source, len(report.ignored), len(fresh))
    return report


def load_weights(model: nn.Module, src: str | os.PathLike | Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Load ConvNeXt weights in any layout (ours, official, timm, torchvision, hf) into ``model``.

    ``src`` is a file (.safetensors, or .pth/.pt/.bin read with ``weights_only=True``), a directory
    holding one, or a state dict. Fine-tuning cases are handled, with a warning: a classifier with a
    different class count (or none) leaves ``head.fc`` freshly initialised, and a stem trained on a
    different number of input channels is adapted (summed RGB kernels for ``in_chans=1``). A backbone
    (``features_only``) skips the checkpoint's head. With ``strict`` any other missing or unexpected
    key is an error; shape mismatches always are.
    """
    return _load(model, read_weights(src), strict)


def timm_conv_mlp(cfg) -> bool:
    """Whether timm builds a model of these depths and dims with 1x1-conv MLPs (atto..nano)."""
    return any(get_config(n).depths == cfg.depths and get_config(n).dims == cfg.dims for n in _TIMM_CONV_MLP_MODELS)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous, unshared CPU tensors (what safetensors and torch.save need).
    Weights with NaN/Inf are refused: no weights file that cannot be used is ever written."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"the model's weights hold NaN/Inf values (first: {bad}); nothing written")
    return state


def write_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, layout: str = "ours",
                  conv_mlp: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict in our layout to ``path`` in ``layout``, atomically.

    The suffix picks the format: ``.safetensors`` (with ``metadata``), or ``.pth``/``.pt``/``.bin`` via
    ``torch.save`` (the official layout wrapped as ``{"model": ...}``, as released). ``conv_mlp`` (timm
    only) keeps the 1x1 convs as 4-d tensors, as timm's atto..nano have them.
    """
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    p = Path(path)
    if p.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{p}: unknown weights file type {p.suffix!r}; name it with one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        out = from_ours(state, layout, conv_mlp=conv_mlp)
    except LayoutError as e:
        raise CheckpointError(f"{p}: {e}") from None
    if p.suffix == ".safetensors":
        return atomic_write(p, lambda tmp: save_file(out, tmp, metadata={**(metadata or {}), "format": "pt"}))
    obj = {"model": out} if layout == "official" else out
    return atomic_write(p, lambda tmp: torch.save(obj, tmp))


__all__ = ["WEIGHT_SUFFIXES", "LoadReport", "Weights", "describe_architecture", "first_non_finite", "guess_model_name",
           "load_weights", "plain_state_dict", "read_weights", "resolve_weights_path", "timm_conv_mlp", "write_weights"]
