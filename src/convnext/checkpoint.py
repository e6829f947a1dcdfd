"""The checkpoint contract shared by train, eval, predict, export, info, convert and resume.

A trained model is one ``.safetensors`` file (or a run directory holding ``model.safetensors``):
weights in our layout plus ``__metadata__["convnext"]``, a JSON string with

- ``arch``: ``{"name": registered name or None, "config": ArchConfig.to_dict()}``
- ``class_names``: list of str or None
- ``preprocess``: input size, mean, std, crop ratio, interpolation, channels (see ``Preprocess``)
- ``train``: free-form dict (epoch, step, best top-1, ...) when it came from training

``save_model`` writes it atomically; ``load_model`` is the one function that turns it back into a model.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError
from .files import atomic_write
from .models import ArchConfig, ConvNeXt
from .models import create_model as build_model
from .preprocess import Preprocess, default_preprocess
from .weights import hf
from .weights.targets import why_unbuildable
from .weights.io import (Weights, describe_architecture, guess_model_name, load_weights, plain_state_dict, read_weights,
                         resolve_weights_path, timm_conv_mlp, write_weights)

METADATA_KEY = "convnext"
QUANTIZATION_KEY = "convnext_quantization"  # present in INT8 files written by infer.quantize (convnext quantize)
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """Everything a checkpoint says about its model besides the weights."""

    config: ArchConfig
    name: str | None = None
    class_names: list[str] | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "arch": {"name": self.name, "config": self.config.to_dict()},
                "class_names": self.class_names,
                "preprocess": self.preprocess.to_dict(),
                "train": self.train,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        return cls(
            config=ArchConfig.from_dict(d["arch"]["config"]),
            name=d["arch"].get("name"),
            class_names=d.get("class_names"),
            preprocess=Preprocess.from_dict(d.get("preprocess") or {}),
            train=d.get("train") or {},
        )


def save_model(model: ConvNeXt, path: str | os.PathLike, info: ModelInfo | None = None) -> Path:
    """Write ``model`` (weights + metadata) to a ``.safetensors`` file, atomically."""
    if info is None:
        info = ModelInfo(config=model.cfg)
    metadata = {METADATA_KEY: info.to_json(), "format": "pt"}
    state = plain_state_dict(model)
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _read_metadata(p: Path) -> dict[str, str]:
    try:
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise CheckpointError(f"{p}: not a readable safetensors file ({e}); re-export or re-download it") from None


def read_quantization(path: str | os.PathLike) -> dict[str, Any] | None:
    """The quantization record of an INT8 file (``convnext quantize``), or None for any other file."""
    p = resolve_weights_path(path)
    if p.suffix != ".safetensors":
        return None
    try:
        text = _read_metadata(p).get(QUANTIZATION_KEY)
    except CheckpointError:  # damaged: the float loader reads it next and says what exactly is wrong
        return None
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise CheckpointError(f"{p}: its INT8 record is not valid JSON; re-quantize the float checkpoint")
    return record


def refuse_int8(p: Path) -> None:
    """Commands that need float weights (convert, export, info's weight check, fine-tuning) stop here."""
    if p.suffix == ".safetensors" and QUANTIZATION_KEY in _read_metadata(p):
        raise CheckpointError(f"{p} is an INT8 model from convnext quantize, which only predict and eval run; "
                              "give this command the float checkpoint it was quantized from")


def _read_convnext_metadata(p: Path) -> ModelInfo | None:
    """The convnext metadata of a safetensors file, or None when it has none (or is not safetensors)."""
    meta = _read_metadata(p)
    if METADATA_KEY not in meta:
        return None
    try:
        return ModelInfo.from_json(meta[METADATA_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p}: convnext metadata is invalid ({e}); re-save the checkpoint") from None


def read_info(path: str | os.PathLike) -> ModelInfo:
    """Read only the metadata of a checkpoint written by ``save_model``."""
    p = resolve_weights_path(path)
    info = _read_convnext_metadata(p)
    if info is None:
        raise CheckpointError(
            f"{p}: safetensors file has no convnext metadata (architecture unknown); "
            "load it with convnext.load_weights(create_model(NAME), path) instead"
        )
    return info


def check_weights_fit(path: str | os.PathLike, info: ModelInfo) -> None:
    """Raise CheckpointError unless the tensors of our checkpoint at ``path`` have the names and shapes of the
    architecture its metadata describes. Reads the file's header only, not the weights."""
    p = resolve_weights_path(path)
    refuse_int8(p)
    with torch.device("meta"):  # shapes only: no memory, no init
        expected = {k: tuple(v.shape) for k, v in ConvNeXt(info.config).state_dict().items()}
    with safe_open(str(p), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for key in expected.keys() | found.keys():
        if expected.get(key) != found.get(key):
            what = (f"has no tensor {key}" if key not in found else f"holds {key} it should not" if key not in expected
                    else f"holds {key} with shape {found[key]}, not {expected[key]}")
            raise CheckpointError(f"{p}: its metadata describes one architecture but the file {what}; the file "
                                  "was altered after saving: re-save or re-export the checkpoint")


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    model_name: str | None = None,
    **overrides: Any,
) -> tuple[ConvNeXt, ModelInfo]:
    """Build the model a checkpoint describes and load its weights. Returns (model in eval mode, info).

    A checkpoint written by ``save_model`` carries its architecture. Any other weights file (official
    ``.pth``, timm / torchvision / Hugging Face ``.bin`` or ``.safetensors``, a plain state dict) needs
    ``model_name``; the model is then ``create_model(model_name, **overrides)`` with ``num_classes`` and
    ``in_chans`` defaulting to the file's. ``overrides`` (ArchConfig fields, ``features_only``,
    ``out_indices``) also apply to our own checkpoints, e.g. ``num_classes=N`` to fine-tune.
    """
    p = resolve_weights_path(path)
    weights = read_weights(p)  # first: it gives the clearest message for empty or damaged files
    refuse_int8(p)
    info = _read_convnext_metadata(p) if p.suffix == ".safetensors" else None
    if info is None:
        if model_name is None:
            guess = guess_model_name(weights.state)
            hint = f"; the weights look like {guess}" if guess else ""
            raise CheckpointError(
                f"{p}: {weights.layout}-layout weights without convnext metadata, so the architecture is "
                f"unknown; pass --model NAME (in Python: load_model(path, model_name=NAME)){hint}"
            )
        model = create_model(model_name, pretrained=weights, **overrides)
        info = ModelInfo(config=model.cfg, name=model_name, preprocess=default_preprocess(model.cfg.in_chans))
    else:
        if model_name is not None and info.name is not None and model_name != info.name:
            warnings.warn(f"--model {model_name} ignored: {p.name} carries its architecture ({info.name})",
                          UserWarning, stacklevel=2)
        model = create_model(info.config, pretrained=weights, **overrides)
        if model.cfg != info.config:
            if model.cfg.in_chans != info.config.in_chans:
                info.preprocess = default_preprocess(model.cfg.in_chans)
            if info.class_names is not None and len(info.class_names) != model.cfg.num_classes:
                info.class_names = None
            info.config = model.cfg
    return model.to(map_location).eval(), info


def create_model(
    name: str | ArchConfig,
    pretrained: str | os.PathLike | Weights | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> ConvNeXt:
    """Build a model by registered name (or from an ArchConfig), with ArchConfig fields overridden.

    ``pretrained``: a local weights file in any layout ``convnext.load_weights`` reads (nothing is
    downloaded). ``num_classes`` and ``in_chans`` default to the file's; passing them fine-tunes
    (fresh head / adapted stem, with a warning). ``features_only=True`` builds a backbone returning
    the stage outputs in ``out_indices`` (see ``ConvNeXt.feature_info``).

    >>> model = create_model("convnext_tiny", num_classes=10, drop_path_rate=0.1)
    >>> backbone = create_model("convnext_tiny", features_only=True, out_indices=(1, 2, 3))
    """
    weights = None
    if pretrained is not None:
        weights = read_weights(pretrained)
        found = describe_architecture(weights.state)
        for key in ("num_classes", "in_chans"):
            if key in found and key not in overrides:
                overrides[key] = found[key]
    model = build_model(name, features_only=features_only, out_indices=out_indices, **overrides)
    if weights is not None:
        load_weights(model, weights)
    return model


def export_weights(model: nn.Module, path: str | os.PathLike, layout: str = "ours", info: ModelInfo | None = None,
                   conv_mlp: bool | None = None) -> Path:
    """Write ``model``'s weights in ``layout`` to ``path`` (atomically).

    The suffix picks the file format: ``.safetensors`` (the default for our own layout, which then
    carries convnext metadata so ``load_model`` needs nothing else; ``info`` is that metadata), or
    ``.pth``/``.pt``/``.bin`` via ``torch.save`` (official layout wrapped as ``{"model": ...}`` as
    released). With ``layout="hf"`` a directory (or a path without suffix) becomes a Hugging Face model
    folder: ``model.safetensors`` plus the ``config.json`` and ``preprocessor_config.json`` that
    ``transformers``' ``from_pretrained`` reads. ``conv_mlp`` (timm only) keeps 1x1 convs as timm's
    atto..nano have them; by default it follows timm's choice for the model's depths and dims.
    """
    p = Path(path)
    cfg = getattr(model, "cfg", None)
    why = why_unbuildable(cfg, layout) if cfg is not None else None
    if why is not None:  # before anything is written: a file their library cannot use, or uses wrongly
        raise CheckpointError(f"{p}: cannot export in the {layout} layout: {why}; export it with layout 'ours'")
    if layout == "hf" and hf.is_folder_target(p):
        # a from_pretrained-ready folder: weights, config.json and preprocessor_config.json
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"{p} exists and is not a directory; choose a folder for the hf model")
        files = hf.folder_files(model, info)  # the JSON files' contents, computed before anything is written
        weights = export_weights(model, p / hf.WEIGHTS_NAME, layout="hf", info=info)
        hf.write_files(p, files)
        return weights
    if layout == "ours" and p.suffix == ".safetensors" and not getattr(model, "features_only", False):
        return save_model(model, p, info)
    if layout == "timm" and conv_mlp is None:
        conv_mlp = timm_conv_mlp(model.cfg)
    state = plain_state_dict(model)
    if layout == "official" and getattr(model, "features_only", False):
        state = _with_every_feature_norm(model, state)
    return write_weights(state, p, layout, conv_mlp=bool(conv_mlp))


def _with_every_feature_norm(backbone: ConvNeXt, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official detection/segmentation backbone builds norm{i} for every stage whatever its out_indices:
    give the stages our backbone does not output the fresh norm (weight 1, bias 0) that code would start from."""
    if backbone.cfg.norm != "layernorm":
        return state
    state = dict(state)
    for i in range(len(backbone.stages)):
        if f"feature_norms.{i}.weight" not in state:
            state[f"feature_norms.{i}.weight"] = torch.ones(backbone.cfg.dims[i])
            state[f"feature_norms.{i}.bias"] = torch.zeros(backbone.cfg.dims[i])
    return state
