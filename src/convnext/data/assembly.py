"""Datasets assembled for a run: train/val splits with their transforms, and the loaders over them.

Training (``build_data``) and ``convnext eval`` (``load_eval_split`` + ``eval_dataset``) both build their
evaluation data here, so validation in training scores exactly what ``convnext eval`` and
``convnext predict`` would. The run's settings come in duck-typed (objects with the fields of
``convnext.train.config.DataConfig`` / ``AugmentConfig``): ``data`` sits below ``train`` and does not import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..preprocess import Preprocess
from .datasets import check_same_classes, get_dataset_spec, limit_samples, load_dataset, split_holdout
from .folders import ImageFolder, print_warnings_as_lines
from .transforms import BatchMixer, SeededTransform, batched_train_transform, build_train_transform, eval_transform


@dataclass
class DataBundle:
    """A run's data: both splits with their transforms, the class names and the eval preprocessing."""

    train: Any  # SeededTransform over the (limited) train split, augmented
    val: Any  # SeededTransform over the (limited) val split, through the eval pipeline
    classes: list[str]
    # What validation applies, and so what the run's checkpoints record for eval/predict/export.
    preprocess: Preprocess
    bad_images: int  # unreadable files skipped in both splits

    @property
    def in_chans(self) -> int:
        return self.preprocess.channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std


def model_channels(dataset: str, grayscale: str, in_chans: int | None = None) -> int:
    """Input channels of a model trained on ``dataset``: ``in_chans`` when the config sets it
    (model.overrides.in_chans); 1 for grey data with ``grayscale="in_chans"``; otherwise 3 (grey data is
    repeated into RGB, so an ImageNet-style stem and RGB weights apply)."""
    if in_chans is not None:
        return in_chans
    grey = get_dataset_spec(dataset).channels == 1
    return 1 if grey and grayscale == "in_chans" else 3


def eval_dataset(ds, pre: Preprocess, limit: int = 0) -> SeededTransform:
    """``limit`` samples of ``ds`` (the first of a fixed shuffle, 0 = all) through the one eval pipeline of ``pre``,
    converting the dataset's own channel count to ``pre.channels``."""
    src_channels = getattr(ds, "channels", pre.channels)
    return SeededTransform(limit_samples(ds, limit), eval_transform(pre, src_channels))


def build_data(data, aug, in_chans: int, seed: int) -> DataBundle:
    """The train and val splits of ``data.dataset`` for a model taking ``in_chans`` channels.

    ``data.holdout`` > 0 validates on that many images held out of the train split instead of the val split.
    Normalisation: ``data.mean``/``data.std`` when given, else the dataset registry's statistics.
    Train images get ``aug``'s pipeline; val images the eval pipeline (resize to
    image_size / aug.crop_ratio, center crop image_size). ``seed`` picks the synthetic data.
    """
    kw = dict(root=data.root, channels=in_chans, strict=data.strict, verify=data.verify,
              synthetic_samples=data.synthetic_samples, synthetic_classes=data.synthetic_classes,
              image_size=data.image_size, seed=seed)
    with print_warnings_as_lines():
        train = load_dataset(data.dataset, "train", **kw)
        val = load_dataset(data.dataset, "val", **kw)
    check_same_classes(train, val)
    if data.holdout:  # validate on training images the run never trains on
        train, val = split_holdout(train, data.holdout)
    if len(train) == 0 or len(val) == 0:
        raise UsageError(f"data.dataset={data.dataset}: the {'train' if not len(train) else 'val'} split is empty")
    bad = len(getattr(train, "bad_files", [])) + len(getattr(val, "bad_files", []))
    if data.mean is not None:
        mean, std = tuple(data.mean), tuple(data.std)
    else:
        mean, std = get_dataset_spec(data.dataset).stats(in_chans)
    if len(mean) != in_chans:
        raise UsageError(f"data.mean/std have {len(mean)} values but the model takes {in_chans} channel(s)")
    pre = Preprocess(input_size=data.image_size, mean=mean, std=std, crop_ratio=aug.crop_ratio,
                     interpolation=aug.interpolation, channels=in_chans)
    src_channels = getattr(train, "channels", in_chans)
    train_tf = build_train_transform(aug, data.image_size, mean, std, in_chans, src_channels)
    batch_tf = batched_train_transform(aug, data.image_size, mean, std, in_chans, src_channels)
    train_ds = SeededTransform(limit_samples(train, data.limit_train), train_tf, batch_tf)
    return DataBundle(train_ds, eval_dataset(val, pre, data.limit_val), list(train.classes), pre, bad)


def build_mixer(aug, num_classes: int) -> BatchMixer | None:
    """Mixup/CutMix with label smoothing as ``aug`` sets them; None when both are off (the loss then
    applies the label smoothing itself)."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    return BatchMixer(num_classes, aug.mixup, aug.cutmix, aug.mixup_switch_prob, aug.mixup_prob, aug.label_smoothing)


def load_eval_split(dataset: str, split: str, root: str | os.PathLike | None, channels: int):
    """One split to evaluate on, before transforms. A folder dataset is ``root/<split>/CLASS/*``, or
    ``root/CLASS/*`` when ``root`` has no ``<split>`` folder; every file is checked up front."""
    if dataset != "folder":
        return load_dataset(dataset, split, root=root, channels=channels)
    if root is None:
        raise UsageError("--dataset folder needs --data-root DIR")
    root = Path(root)
    split_dir = root / split if (root / split).is_dir() else root
    return ImageFolder(split_dir, channels=channels, verify=True)


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool):
    # Its own generator: creating an iterator would otherwise draw from the global RNG, so a run
    # resumed mid-epoch (one extra iterator) would see different dropout/mixup draws.
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


__all__ = ["DataBundle", "build_data", "build_mixer", "eval_dataset", "load_eval_split", "make_loader",
           "model_channels"]
