"""The training engine: ``from convnext.train import TrainConfig, train``."""

from .config import PRESETS, TrainConfig, load_config, preset
from .loop import CheckpointWriteError, TrainingDiverged, build_model, evaluate, train
from .optim import build_optimizer, build_scheduler, lr_at, param_groups

__all__ = [
    "CheckpointWriteError", "PRESETS", "TrainConfig", "TrainingDiverged", "build_model", "build_optimizer",
    "build_scheduler", "evaluate", "load_config", "lr_at", "param_groups", "preset", "train",
]
