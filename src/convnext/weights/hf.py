"""A Hugging Face model folder: the weights plus the config.json / preprocessor_config.json that
``transformers``' ``from_pretrained`` and ``pipeline`` read, so an exported model loads there as is.

Only the file contents are ours; nothing here imports transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..files import atomic_write_text
from ..preprocess import Preprocess

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
# PIL resampling filters as transformers' image processors store them
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


def is_folder_target(path: Path) -> bool:
    """An existing directory, or a path without a file suffix, means "write a model folder"."""
    return path.is_dir() or path.suffix == ""


def model_config(model: nn.Module, class_names: list[str] | None = None, image_size: int = 224) -> dict[str, Any]:
    """transformers' ConvNextConfig fields for ``model`` (a classifier, a feature extractor or a backbone)."""
    cfg = model.cfg  # one transformers builds: export_weights has refused the others (weights/targets.py)
    out: dict[str, Any] = {
        "model_type": "convnext",
        "num_channels": cfg.in_chans,
        "patch_size": cfg.stem_patch_size,
        "num_stages": len(cfg.depths),
        "hidden_sizes": list(cfg.dims),
        "depths": list(cfg.depths),
        "hidden_act": cfg.activation,  # transformers' ACT2FN names: "gelu", "relu"
        "initializer_range": 0.02,
        # transformers' default (1e-12) is for its pooler norm only; every ConvNeXt norm uses 1e-6
        "layer_norm_eps": 1e-6,
        "layer_scale_init_value": float(cfg.layer_scale_init or 0.0),
        "drop_path_rate": float(cfg.drop_path_rate),
        "image_size": int(image_size),
    }
    if getattr(model, "features_only", False):
        out["architectures"] = ["ConvNextBackbone"]
        # transformers counts the stem as stage 0: our stage i is its "stage{i+1}"
        out["out_features"] = [f"stage{i + 1}" for i in model.out_indices]
        out["out_indices"] = [i + 1 for i in model.out_indices]
    elif cfg.num_classes > 0:
        out["architectures"] = ["ConvNextForImageClassification"]
        names = class_names if class_names and len(class_names) == cfg.num_classes else \
            [f"LABEL_{i}" for i in range(cfg.num_classes)]
        out["id2label"] = {str(i): n for i, n in enumerate(names)}
        out["label2id"] = {n: i for i, n in enumerate(names)}
    else:
        out["architectures"] = ["ConvNextModel"]
    return out


def preprocessor_config(preprocess) -> dict[str, Any]:
    """ConvNextImageProcessor fields reproducing our eval transform: resize the shorter side to
    input_size / crop_ratio, center crop input_size, scale to [0, 1], normalise."""
    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": preprocess.input_size},
        "crop_pct": preprocess.crop_ratio,
        "resample": _PIL_RESAMPLE.get(preprocess.interpolation, 3),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocess.mean),
        "image_std": list(preprocess.std),
    }


def folder_files(model: nn.Module, info=None) -> dict[str, dict[str, Any]]:
    """The folder's JSON files besides the weights, for a model transformers builds (export_weights checks)."""
    preprocess = info.preprocess if info is not None else Preprocess()
    class_names = info.class_names if info is not None else None
    return {CONFIG_NAME: model_config(model, class_names, preprocess.input_size),
            PREPROCESSOR_NAME: preprocessor_config(preprocess)}


def write_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Write each file of ``folder_files`` into ``folder``, atomically."""
    for name, content in files.items():
        atomic_write_text(folder / name, json.dumps(content, indent=2) + "\n")
