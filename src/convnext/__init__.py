"""ConvNeXt ("A ConvNet for the 2020s") and every network of the paper's modernization roadmap.

The public API, loaded lazily: ``import convnext`` (or ``convnext.models``) does not pull in PIL,
ONNX export, the training engine or the checkpoint code until one of their names is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ROADMAP": "convnext.models",
    "ArchConfig": "convnext.models",
    "ConvNeXt": "convnext.models",
    "count_flops": "convnext.models",
    "count_params": "convnext.models",
    "get_config": "convnext.models",
    "list_models": "convnext.models",
    "create_model": "convnext.checkpoint",
    "export_weights": "convnext.checkpoint",
    "load_model": "convnext.checkpoint",
    "save_model": "convnext.checkpoint",
    "load_weights": "convnext.weights",
    "export_checkpoint": "convnext.infer.export",
    "optimize_for_inference": "convnext.infer.fuse",
    "predict": "convnext.infer.predict",
    "quantize": "convnext.infer.quantize",
    "save_quantized": "convnext.infer.quantize",
    "load_quantized": "convnext.infer.quantize",
    "set_grad_checkpointing": "convnext.train.recompute",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convnext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads these on first use
    from .checkpoint import create_model, export_weights, load_model, save_model
    from .infer.export import export_checkpoint
    from .infer.fuse import optimize_for_inference
    from .infer.predict import predict
    from .infer.quantize import load_quantized, quantize, save_quantized
    from .models import ROADMAP, ArchConfig, ConvNeXt, count_flops, count_params, get_config, list_models
    from .train.recompute import set_grad_checkpointing
    from .weights import load_weights
