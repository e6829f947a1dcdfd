"""The study's budgets and its two training recipes, as TrainConfigs for the training engine.

Both recipes see the same data, seeds, resolution and number of optimizer steps; they differ only in
what the paper changes between its first two roadmap steps.

``original`` (ResNet-50's recipe, scaled to the budget): SGD with momentum 0.9, lr 0.1 per 256 images,
weight decay 1e-4 (not on norms/biases), short linear warmup then cosine decay, light augmentation
(random resized crop + horizontal flip), no RandAugment, Mixup, CutMix, Random Erasing, label smoothing,
stochastic depth or EMA.

``modern`` (paper appendix A.1, scaled to the budget): AdamW, weight decay 0.05, warmup then cosine,
RandAugment (2 ops, m9, mstd 0.5), Mixup 0.8 / CutMix 1.0, Random Erasing, label smoothing 0.1,
stochastic depth, layer scale 1e-6 (part of every modern step's ArchConfig). The ImageNet values
assume 300 epochs; a run here is a fraction of one epoch of Fashion-MNIST, so the regularisers are
kept but weakened (Mixup/CutMix on 30% of batches, erasing 0.1, drop path 0.05), the lr is set for
the batch instead of scaled linearly from 4e-3 @ 4096 (which would give 6e-5, too small for a few
hundred steps), and EMA is off: the paper notes it helps the larger models, and an EMA horizon scaled
to this run (a few dozen steps) is indistinguishable from the raw weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datasets import DATASETS
from ..errors import UsageError
from ..models.roadmap import RoadmapStep
from ..train import TrainConfig
from .scaling import scale_config

# Registry datasets (convnext.data.datasets) the study trains on: labelled 10-class data that needs no
# folder layout.
STUDY_DATASETS = ("fashion_mnist", "synthetic")
# The hyphenated spelling earlier versions used on the command line and recorded in study.json.
DATA_ALIASES = {"fashion-mnist": "fashion_mnist"}


def study_data(name: str) -> str:
    """The registry name of the study dataset ``name`` (an alias allowed); UsageError for any other data."""
    data = DATA_ALIASES.get(name, name)
    if data not in STUDY_DATASETS:
        raise UsageError(f"--data {name!r} is not supported by the study; use one of {', '.join(STUDY_DATASETS)}")
    return data


def data_channels(data: str) -> int:
    """Input channels of the study's networks on ``data``: the stored images' count (1 for Fashion-MNIST);
    data decoded to any count (synthetic) is drawn as RGB, the paper's input."""
    return DATASETS[study_data(data)].channels or 3


@dataclass(frozen=True)
class StudyBudget:
    """What every (step, seed) run gets. Changing any field makes a different study."""

    image_size: int = 64  # Fashion-MNIST's 28 px upsampled so the 32x total stride leaves a 2x2 map
    width_mult: float = 0.125  # every width / 8 (ResNet-50 stages 32..256, ConvNeXt-T stages 12..96)
    # small batches: more updates from the same images, which a fraction of an epoch needs most
    batch_size: int = 32
    train_images: int = 5120  # training subset (fixed shuffle, covers every class), seen `epochs` times
    epochs: int = 1
    val_images: int = 2000  # evaluation subset of the test split
    warmup_fraction: float = 0.1  # of all optimizer steps
    save_every_steps: int = 40  # crash-safe checkpoint interval (resume granularity)
    # The train split kept on the device and augmented there in batch form (the engine's data.on_device): on a GPU
    # the per-sample pipeline cannot feed the study's small networks. It has no RandAugment, so the modern recipe
    # runs without it (randaugment False, required then): the same for every modern step, as the paper kept one
    # recipe across the roadmap.
    on_device: bool = False
    randaugment: bool = True  # the modern recipe's RandAugment
    # How the modern recipe regularises (REGULARISATION): "paper", the paper's regularisers weakened for the budget;
    # "light", what trains these ~0.5 M-parameter networks furthest in a few passes (the same for every modern step)
    regularisation: str = "paper"

    @property
    def steps(self) -> int:
        return (self.train_images // self.batch_size) * self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "StudyBudget":
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UsageError(f"unknown budget field(s) {unknown}")
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> "StudyBudget":
        if self.image_size < 32:
            raise UsageError(f"budget image_size={self.image_size} is below the networks' total stride 32; use >= 32")
        if not math.isfinite(self.width_mult) or self.width_mult <= 0 or self.batch_size < 1 or self.epochs < 1 or self.val_images < 1:
            raise UsageError("budget width_mult, batch_size, epochs and val_images must all be positive (and finite)")
        if self.train_images < self.batch_size:
            raise UsageError(f"budget train_images={self.train_images} is smaller than one batch "
                             f"({self.batch_size}); raise train_images or lower batch_size")
        if not 0 <= self.warmup_fraction < 1:
            raise UsageError(f"budget warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        if self.save_every_steps < 0:
            raise UsageError(f"budget save_every_steps={self.save_every_steps} must be >= 0")
        if self.regularisation not in REGULARISATION:
            raise UsageError(f"budget regularisation={self.regularisation!r} is not one of {', '.join(REGULARISATION)}")
        if self.on_device and self.randaugment:
            raise UsageError("budget on_device=True has no RandAugment (no batch form on the device); "
                             "set randaugment False too, or on_device False")
        return self


BUDGETS: dict[str, StudyBudget] = {
    # The committed CPU study (results/roadmap): 5 passes over all 60,000 training images at 32 px, width / 8, batch 128,
    # the light regularisation, evaluated on the whole test split; the batched input path (data.on_device, here the
    # CPU's memory) because the per-sample one feeds one thread ~700-1,400 img/s and these networks train at 1,500-2,700
    # (benchmarks/results/study/step_speed_32px.json).
    # 17 steps x 3 seeds, two runs at a time, took 76 minutes of the 2-core machine; a run at 64 px takes 2.5-3.8x
    # as long (benchmarks/results/study/ablations).
    "cpu": StudyBudget(image_size=32, width_mult=0.125, batch_size=128, train_images=60000, epochs=5,
                       val_images=10000, warmup_fraction=0.05, save_every_steps=200, on_device=True,
                       randaugment=False, regularisation="light"),
    # The study committed before 2026-12-06: 160 optimizer steps of 32 images per run (1/12 of Fashion-MNIST, once).
    "cpu_short": StudyBudget(),
    # The short CPU study's networks (64 px, width / 8, cpu_short), trained further on a GPU: 30 passes over all 60,000
    # training images, the split held on the GPU and augmented there (so no RandAugment), evaluated on the whole test
    # split. Unscaled widths at 128 px do not fit issue #16's 10 minutes: one H100 trains those networks at
    # 1,843-4,880 img/s (benchmarks/results/gpu/study_step_speed.json), ~4.9 minutes per pass for all 17, so ten
    # minutes buy two passes, not a plateau. Networks this small are bound by the per-step overhead of eager PyTorch,
    # not by the GPU: several runs share it (convnext study roadmap --jobs).
    "gpu": StudyBudget(image_size=64, width_mult=0.125, batch_size=128, train_images=60000, epochs=30,
                       val_images=10000, warmup_fraction=0.05, save_every_steps=0, on_device=True, randaugment=False),
    # Seconds per run: for tests and for trying the command.
    "micro": StudyBudget(image_size=32, width_mult=0.0625, batch_size=8, train_images=32, epochs=1,
                         val_images=16, warmup_fraction=0.25, save_every_steps=1),
}


def get_budget(name: str) -> StudyBudget:
    if name not in BUDGETS:
        raise UsageError(f"unknown budget {name!r}; use one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


# Dotted TrainConfig overrides per recipe, on top of the paper defaults.
RECIPES: dict[str, dict[str, Any]] = {
    "original": {
        "opt.optimizer": "sgd", "opt.momentum": 0.9,
        "opt.lr": 0.1, "opt.lr_base_batch": 256, "opt.weight_decay": 1e-4, "opt.min_lr": 0.0,
        "aug.randaugment": False, "aug.random_erasing": 0.0, "aug.mixup": 0.0, "aug.cutmix": 0.0,
        "aug.label_smoothing": 0.0, "reg.drop_path": 0.0, "reg.ema": False,
    },
    "modern": {
        "opt.optimizer": "adamw",
        "opt.lr": 2e-3, "opt.lr_base_batch": None, "opt.weight_decay": 0.05, "opt.min_lr": 1e-5,
        "aug.randaugment": True, "aug.randaugment_n": 2, "aug.randaugment_m": 9, "aug.randaugment_mstd": 0.5,
        "aug.random_erasing": 0.1, "aug.mixup": 0.8, "aug.cutmix": 1.0, "aug.mixup_prob": 0.3,
        "aug.label_smoothing": 0.1, "reg.drop_path": 0.05, "reg.ema": False,
    },
}

# Shared by both recipes: a crop that keeps most of a 28 px garment, bilinear resizing (bicubic overshoots
# on upsampled 28 px images), and evaluation on the whole resized image (crop ratio 1).
COMMON = {"aug.random_resized_crop": True, "aug.crop_scale_min": 0.35, "aug.hflip": 0.5,
          "aug.interpolation": "bilinear", "aug.crop_ratio": 1.0}

# The modern recipe's regularisation, by budget (StudyBudget.regularisation), on top of RECIPES["modern"].
# "light" was chosen on 10,000 images held out of the training split (benchmarks/results/study/plateau_probe_32px.json,
# ConvNeXt-T's design at 32 px, width / 8, 6 passes): 88.0 % with it against 83.3 % with the "paper" regularisers;
# lr 8e-3 instead of 4e-3 (87.9 %) and neither label smoothing nor stochastic depth (88.05 %) made no difference.
# Shifts of up to 2 px and flips replace the random resized crop, as in the small-data recipe (docs/recipes.md).
REGULARISATION: dict[str, dict[str, Any]] = {
    "paper": {},
    "light": {"aug.random_resized_crop": False, "aug.crop_padding": 2, "aug.randaugment": False, "aug.mixup": 0.0,
              "aug.cutmix": 0.0, "aug.random_erasing": 0.0, "opt.lr": 4e-3},
}


def train_config(step: RoadmapStep, seed: int, budget: StudyBudget, data: str, work_dir: str | Path,
                 data_root: str | None = None, device: str = "auto") -> TrainConfig:
    """The engine config for one (step, seed) run of the study."""
    data = study_data(data)
    scaled = scale_config(step.config, budget.width_mult)
    overrides: dict[str, Any] = {"dims": list(scaled.dims)}
    if scaled.stem_dim is not None:
        overrides["stem_dim"] = scaled.stem_dim
    values: dict[str, Any] = {
        "model.name": step.name, "model.overrides": overrides, "model.width_mult": 1.0,
        "data.dataset": data, "data.root": data_root, "data.image_size": budget.image_size,
        "data.grayscale": "in_chans", "data.batch_size": budget.batch_size, "data.workers": 0,
        "data.limit_train": budget.train_images, "data.limit_val": budget.val_images,
        "data.synthetic_samples": budget.train_images, "data.synthetic_classes": 10,
        "opt.epochs": budget.epochs, "opt.warmup_epochs": budget.warmup_fraction * budget.epochs,
        "runtime.out": str(work_dir), "runtime.run_name": run_name(step.name, seed), "runtime.seed": seed,
        "runtime.device": device, "runtime.resume": "auto", "runtime.overwrite": True,
        "runtime.save_every_steps": budget.save_every_steps, "runtime.log_every": 10,
        "runtime.progress": False, "runtime.tensorboard": False, "runtime.plots": False,
        # NHWC memory: how a run computes, not what it learns (not a study setting). On one CPU thread every
        # roadmap network trains 1.05-1.77x faster so (benchmarks/results/study/step_speed_64px.json).
        "runtime.channels_last": True, "data.on_device": budget.on_device,
        **recipe_values(step.recipe, budget),
    }
    return TrainConfig().replace(values)


def recipe_values(recipe: str, budget: StudyBudget) -> dict[str, Any]:
    """The dotted engine settings of ``recipe`` (``COMMON`` and ``RECIPES[recipe]``) as ``budget`` runs it."""
    values = {**COMMON, **RECIPES[recipe]}
    if recipe == "modern":
        values.update(REGULARISATION[budget.regularisation])
    if not budget.randaugment:
        values["aug.randaugment"] = False
    return values


def run_name(step: str, seed: int) -> str:
    return f"{step}-seed{seed}"

