"""ConvNeXt ("A ConvNet for the 2020s") and every network of the paper's modernization roadmap."""

from .models import (
    ROADMAP,
    ArchConfig,
    ConvNeXt,
    count_flops,
    count_params,
    create_model,
    get_config,
    list_models,
)

from .infer.fuse import optimize_for_inference

__version__ = "0.1.0"

__all__ = [
    "ROADMAP",
    "ArchConfig",
    "ConvNeXt",
    "count_flops",
    "count_params",
    "create_model",
    "get_config",
    "list_models",
    "optimize_for_inference",
]
