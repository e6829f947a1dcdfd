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

from .infer.export import export_checkpoint
from .infer.fuse import optimize_for_inference
from .infer.predict import predict
from .weights import export_weights, load_weights

__version__ = "0.1.0"

__all__ = [
    "ROADMAP",
    "ArchConfig",
    "ConvNeXt",
    "count_flops",
    "count_params",
    "create_model",
    "export_checkpoint",
    "export_weights",
    "get_config",
    "list_models",
    "load_weights",
    "optimize_for_inference",
    "predict",
]
