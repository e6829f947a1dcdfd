from .config import ArchConfig
from .convnext import Block, ConvNeXt
from .flops import count_flops, count_params
from .registry import ModelEntry, create_model, get_config, get_entry, is_variant_of, list_models
from .roadmap import ROADMAP, RoadmapStep, roadmap_step

__all__ = [
    "ArchConfig", "Block", "ConvNeXt", "ModelEntry", "ROADMAP", "RoadmapStep",
    "count_flops", "count_params", "create_model", "get_config", "get_entry", "is_variant_of", "list_models",
    "roadmap_step",
]
