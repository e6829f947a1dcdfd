"""Datasets (image folders, Fashion-MNIST, synthetic) and the train/eval transform pipelines."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST, read_idx
from .folders import BadImageWarning, ImageFolder, print_warnings_as_lines, scan_folder
from .synthetic import SyntheticImages
from .transforms import BatchMixer, SeededTransform, build_eval_transform, build_train_transform

DATASETS = ("folder", "fashion_mnist", "synthetic")
# Per-channel statistics used when the config gives none.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def load_dataset(kind: str, split: str, root: str | os.PathLike | None = None, channels: int = 3,
                 strict: bool = False, verify: bool = True, synthetic_samples: int = 512,
                 synthetic_classes: int = 10, image_size: int = 32, seed: int = 0):
    """One split (``train`` or ``val``) of a dataset, before transforms.

    ``folder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``root`` itself is the split).
    ``fashion_mnist``: the IDX files in ``root`` (default: the Debian package path).
    ``synthetic``: reproducible random patterns (train and val differ by seed).
    """
    if kind == "fashion_mnist":
        return FashionMNIST(root or FASHION_MNIST_ROOT, split)
    if kind == "synthetic":
        n = synthetic_samples if split == "train" else max(synthetic_samples // 4, synthetic_classes)
        return SyntheticImages(n, synthetic_classes, image_size, channels, seed=seed * 2 + (split != "train"),
                               pattern_seed=seed)
    if kind == "folder":
        if root is None:
            raise UsageError("data.dataset=folder needs data.root (a directory with train/ and val/ class folders)")
        root = Path(root)
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir}: missing; an image-folder dataset needs {root}/train/CLASS/* "
                                    f"and {root}/val/CLASS/*")
        return ImageFolder(split_dir, channels=channels, verify=verify, strict=strict)
    raise UsageError(f"data.dataset={kind!r} is not valid; use one of {', '.join(DATASETS)}")


def check_same_classes(train, val) -> None:
    if list(train.classes) != list(val.classes):
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UsageError(
            f"train and val have different classes (only in train: {only_train[:5]}, only in val: {only_val[:5]}); "
            "make both splits hold the same class folders"
        )


__all__ = [
    "BadImageWarning", "BatchMixer", "DATASETS", "FASHION_MNIST_ROOT", "FashionMNIST", "ImageFolder",
    "SeededTransform", "SyntheticImages", "build_eval_transform", "build_train_transform", "check_same_classes",
    "load_dataset", "print_warnings_as_lines", "read_idx", "scan_folder",
]
