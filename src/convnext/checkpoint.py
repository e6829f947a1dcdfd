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
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import CheckpointError
from .models import ArchConfig, ConvNeXt

METADATA_KEY = "convnext"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """How images must be prepared for this model (what predict/eval/export apply)."""

    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Eval resize: shorter side to input_size / crop_ratio, then center crop input_size (256 -> 224).
    crop_ratio: float = 0.875
    interpolation: str = "bicubic"
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD))
        return cls(**d)


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp (and some writers) create 0600; a checkpoint gets what any new file would (umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous, non-shared CPU tensors
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: ConvNeXt, path: str | os.PathLike, info: ModelInfo | None = None) -> Path:
    """Write ``model`` (weights + metadata) to a ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    if info is None:
        info = ModelInfo(config=model.cfg)
    metadata = {METADATA_KEY: info.to_json(), "format": "pt"}
    state = _plain_state_dict(model)
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        for candidate in ("model.safetensors", "best.safetensors", "last.safetensors"):
            if (p / candidate).is_file():
                return p / candidate
        raise CheckpointError(f"{p}: directory holds no model.safetensors; pass the checkpoint file itself")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint file; check the path")
    return p


def _read_convnext_metadata(p: Path) -> ModelInfo | None:
    """The convnext metadata of a safetensors file, or None when it has none (or is not safetensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise CheckpointError(f"{p}: not a readable safetensors file ({e}); re-export or re-download it") from None
    if METADATA_KEY not in meta:
        return None
    try:
        return ModelInfo.from_json(meta[METADATA_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p}: convnext metadata is invalid ({e}); re-save the checkpoint") from None


def read_info(path: str | os.PathLike) -> ModelInfo:
    """Read only the metadata of a checkpoint written by ``save_model``."""
    p = resolve_checkpoint_path(path)
    info = _read_convnext_metadata(p)
    if info is None:
        raise CheckpointError(
            f"{p}: safetensors file has no convnext metadata (architecture unknown); "
            "load it with convnext.load_weights(create_model(NAME), path) instead"
        )
    return info


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
    from .models import create_model
    from .weights.io import guess_model_name, read_weights, resolve_weights_path

    p = resolve_weights_path(path)
    weights = read_weights(p)  # first: it gives the clearest message for empty or damaged files
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
        info = ModelInfo(config=model.cfg, name=model_name, preprocess=_default_preprocess(model.cfg.in_chans))
    else:
        model = create_model(info.config, pretrained=weights, **overrides)
        if model.cfg != info.config:
            if model.cfg.in_chans != info.config.in_chans:
                info.preprocess = _default_preprocess(model.cfg.in_chans)
            if info.class_names is not None and len(info.class_names) != model.cfg.num_classes:
                info.class_names = None
            info.config = model.cfg
    return model.to(map_location).eval(), info


def _default_preprocess(channels: int) -> Preprocess:
    # ImageNet statistics; for other channel counts their channel average (the stem was adapted
    # from RGB kernels, see convnext.weights.io).
    if channels == 3:
        return Preprocess()
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return Preprocess(mean=(mean,) * channels, std=(std,) * channels, channels=channels)
