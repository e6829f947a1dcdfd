"""The dataset registry: each dataset's name, channel count and statistics, and how to load a split.

Every command that takes a dataset name (train's ``data.dataset``, ``convnext eval --dataset``, the
roadmap study's ``--data``) checks it against ``DATASETS`` here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError, check_choice
from ..preprocess import imagenet_stats
from .cifar import CIFAR
from .cifar import VERSIONS as CIFAR_VERSIONS
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST
from .folders import ImageFolder
from .synthetic import SyntheticImages


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    # Channels of the stored images; None: decoded to whatever the model takes (folders, synthetic).
    channels: int | None
    # Per-channel statistics of the stored images; None: ImageNet's.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Its name alone (and an optional root) gives the same splits every time, so `convnext eval` can take it
    # from a checkpoint's metadata; folders need a root, synthetic data its generation settings.
    standalone: bool = False
    # The size every image of the dataset has (px); None: images of any size (folders), or made at the size asked
    # for (synthetic). A config whose data.image_size is unset trains at this size.
    native_size: int | None = None

    def stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalisation mean/std for a model taking ``channels`` channels of this data."""
        if self.mean is None:
            return imagenet_stats(channels)
        if len(self.mean) == channels:
            return self.mean, self.std
        # grey data repeated into RGB keeps its statistics in every channel
        return self.mean * channels, self.std * channels


DATASETS: dict[str, DatasetSpec] = {
    "folder": DatasetSpec("folder", channels=None),
    "fashion_mnist": DatasetSpec("fashion_mnist", channels=1, mean=(0.2860,), std=(0.3530,), standalone=True,
                                 native_size=28),
    # the training split's per-channel statistics over every pixel (not the mean of per-image stds that some
    # CIFAR code carries: 0.2023, 0.1994, 0.2010)
    "cifar10": DatasetSpec("cifar10", channels=3, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                           standalone=True, native_size=32),
    "cifar100": DatasetSpec("cifar100", channels=3, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                            standalone=True, native_size=32),
    "synthetic": DatasetSpec("synthetic", channels=None),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    check_choice("data.dataset", name, tuple(DATASETS))
    return DATASETS[name]


def load_dataset(kind: str, split: str, root: str | os.PathLike | None = None, channels: int = 3,
                 strict: bool = False, verify: bool = True, synthetic_samples: int = 512,
                 synthetic_classes: int = 10, image_size: int = 32, seed: int = 0):
    """One split (``train`` or ``val``) of a dataset, before transforms.

    ``folder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``root`` itself is the split).
    ``fashion_mnist``: the IDX files in ``root`` (default: the Debian package path).
    ``cifar10`` / ``cifar100``: the authors' binary or Python version, extracted, in ``root`` (no default).
    ``synthetic``: reproducible random patterns (train and val differ by seed).
    """
    get_dataset_spec(kind)
    if kind == "fashion_mnist":
        return FashionMNIST(root or FASHION_MNIST_ROOT, split)
    if kind in CIFAR_VERSIONS:
        return CIFAR(kind, root, split)
    if kind == "synthetic":
        n = synthetic_samples if split == "train" else max(synthetic_samples // 4, synthetic_classes)
        return SyntheticImages(n, synthetic_classes, image_size, channels, seed=seed * 2 + (split != "train"),
                               pattern_seed=seed)
    if root is None:
        raise UsageError("data.dataset=folder needs data.root (a directory with train/ and val/ class folders)")
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: missing; an image-folder dataset needs {root}/train/CLASS/* "
                                f"and {root}/val/CLASS/*")
    return ImageFolder(split_dir, channels=channels, verify=verify, strict=strict)


def check_same_classes(train, val) -> None:
    if list(train.classes) != list(val.classes):
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UsageError(
            f"train and val have different classes (only in train: {only_train[:5]}, only in val: {only_val[:5]}); "
            "make both splits hold the same class folders"
        )


def limit_samples(ds, n: int):
    """The first ``n`` samples of ``ds`` after a fixed shuffle (so they cover every class); all for n=0."""
    if not n or n >= len(ds):
        return ds
    # The shuffle is independent of the run seed: every run with the same limit sees the same samples.
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values.tolist()
    return _subset(ds, order)


def _subset(ds, indices: list[int]):
    sub = torch.utils.data.Subset(ds, indices)
    sub.classes = ds.classes
    sub.channels = getattr(ds, "channels", 3)
    return sub


def split_holdout(ds, n: int):
    """``(rest, held_out)``: ``n`` samples of ``ds`` held out for validation, chosen by a fixed shuffle that does
    not depend on the run seed, so every run of a sweep tunes against the same images."""
    if not 0 < n < len(ds):
        raise UsageError(f"data.holdout={n} must leave training images: the training split has {len(ds)}; "
                         f"use 0 < data.holdout < {len(ds)}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    return _subset(ds, sorted(order[n:])), _subset(ds, sorted(order[:n]))


__all__ = ["DATASETS", "DatasetSpec", "check_same_classes", "get_dataset_spec", "limit_samples", "load_dataset",
           "split_holdout"]
