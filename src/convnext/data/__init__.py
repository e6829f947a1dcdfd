"""Datasets (image folders, Fashion-MNIST, synthetic), the one image loader, the train/eval transforms, and
their assembly into a run's datasets and loaders."""

from .assembly import (DataBundle, build_data, build_mixer, eval_dataset, load_eval_split, make_loader,
                       model_channels)
from .datasets import DATASETS, DatasetSpec, check_same_classes, get_dataset_spec, limit_samples, load_dataset
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST, read_idx
from .folders import BadImageWarning, ImageFolder, print_warnings_as_lines, scan_folder
from .images import ImageError, collect_images, load_batch, load_image, load_tensor
from .synthetic import SyntheticImages
from .transforms import BatchMixer, SeededTransform, build_train_transform, eval_transform

__all__ = [
    "BadImageWarning", "BatchMixer", "DATASETS", "DataBundle", "DatasetSpec", "FASHION_MNIST_ROOT", "FashionMNIST",
    "ImageError", "ImageFolder", "SeededTransform", "SyntheticImages", "build_data", "build_mixer",
    "build_train_transform", "check_same_classes", "collect_images", "eval_dataset", "eval_transform",
    "get_dataset_spec", "limit_samples", "load_batch", "load_dataset", "load_eval_split", "load_image",
    "load_tensor", "make_loader", "model_channels", "print_warnings_as_lines", "read_idx", "scan_folder",
]
