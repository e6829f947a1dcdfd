"""The training engine: ``from convnext.train import TrainConfig, train``.

Modules: ``config`` (TrainConfig, presets), ``loop`` (Trainer, train), ``model`` (the network a config
names), ``optim``, ``ema``, ``evaluate`` (the metric loop, shared with ``convnext eval``), ``run_dir``
(resume policy and a run's files), ``snapshot`` / ``state`` (train_state.pt), ``logging``, ``distributed``,
``accelerate`` (CPU training speed-ups swapped into the model), ``recompute`` (gradient checkpointing).
"""

from .config import PRESETS, TrainConfig, load_config, preset
from .evaluate import evaluate, evaluate_checkpoint
from .loop import TrainingDiverged, train
from .model import build_model
from .optim import build_optimizer, build_scheduler, lr_at, param_groups
from .recompute import set_grad_checkpointing
from .run_dir import CheckpointWriteError

__all__ = [
    "CheckpointWriteError", "PRESETS", "TrainConfig", "TrainingDiverged", "build_model", "build_optimizer",
    "build_scheduler", "evaluate", "evaluate_checkpoint", "load_config", "lr_at", "param_groups", "preset",
    "set_grad_checkpointing", "train",
]
