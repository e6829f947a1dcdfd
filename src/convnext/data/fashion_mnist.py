"""Fashion-MNIST read straight from its IDX files (gzipped or not); no download, no torchvision datasets.

IDX format (LeCun's MNIST page): big-endian magic ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` uint32
sizes, then the raw array. Fashion-MNIST uses dtype 0x08 (uint8) for both images and labels.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsageError

# Debian's dataset-fashion-mnist package; FASHION_MNIST_ROOT points elsewhere (e.g. a copy on a machine without it)
DEFAULT_ROOT = os.environ.get("FASHION_MNIST_ROOT") or "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UsageError(f"{path}: cannot read IDX file ({e}); re-install the dataset") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UsageError(f"{path}: not an IDX file (bad magic number); point the data root at the Fashion-MNIST "
                         f"files ({ROOT_FLAGS})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise UsageError(
            f"{path}: IDX header says shape {shape} but the file holds {len(data) - header} bytes of data; "
            "the file is truncated, re-install the dataset"
        )
    return np.frombuffer(data, dtype=dtype, offset=header, count=count).reshape(shape)


# The loader serves several commands whose flag for the data root differs; name each.
ROOT_FLAGS = "--data.root for train, --data-root for eval and study"


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root}: no {stem}[.gz]; install Fashion-MNIST (apt-get install dataset-fashion-mnist) "
        f"or point the data root at a directory holding the four IDX files ({ROOT_FLAGS})"
    )


class FashionMNIST(Dataset):
    """Fashion-MNIST split as uint8 tensors of shape (1, 28, 28) with int labels.

    ``split`` is ``train`` (60,000 images) or ``val`` (the 10,000-image test set).
    """

    classes = list(CLASS_NAMES)
    channels = 1

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT, split: str = "train") -> None:
        if split not in _FILES:
            raise UsageError(f"Fashion-MNIST split {split!r} is not valid; use train or val")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: Fashion-MNIST directory not found; install it (apt-get install dataset-fashion-mnist) "
                f"or point the data root at the directory holding it ({ROOT_FLAGS})"
            )
        images = read_idx(_find(root, _FILES[split][0]))
        labels = read_idx(_find(root, _FILES[split][1]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match; re-install the dataset"
            )
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
