"""CIFAR-10 and CIFAR-100 read straight from the files their authors distribute; no download, no torchvision datasets.

Both versions of the archives are read, extracted (``tar xzf``), from the folder they unpack to or its parent:

- the binary version (``cifar-10-batches-bin``, ``cifar-100-binary``): fixed-size records, each the label byte(s)
  then 3,072 pixel bytes, a 32 x 32 plane of red, then green, then blue. CIFAR-100's records carry the coarse
  (superclass) label first, then the fine one, which is the one trained on here.
- the Python version (``cifar-10-batches-py``, ``cifar-100-python``; what torchvision downloads): pickled dicts of a
  (N, 3072) uint8 array in the same plane order and a list of labels. A pickle can name any function for the loader
  to call, so these are read by an unpickler that builds plain containers and numpy arrays and refuses every other
  name before anything of it runs.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsageError

PIXELS = 3 * 32 * 32  # one image's bytes: three 32 x 32 planes


@dataclass(frozen=True)
class Version:
    """Where one version of one CIFAR archive keeps its splits and class names."""
    folder: str  # what the archive unpacks to
    train: tuple[str, ...]  # the training split's files, in order
    val: tuple[str, ...]  # the test split's (the val split here, as everywhere in the project)
    names: str  # the class names: one a line (binary) or a pickled dict (Python)
    label_bytes: int = 0  # binary records: label bytes before the pixels (the fine label is the last)
    names_key: bytes = b""  # Python version: the names' key in the pickled dict
    labels_key: bytes = b""  # Python version: the labels' key


_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VERSIONS: dict[str, tuple[Version, ...]] = {
    "cifar10": (
        Version("cifar-10-batches-bin", tuple(f"{b}.bin" for b in _BATCHES), ("test_batch.bin",),
                "batches.meta.txt", label_bytes=1),
        Version("cifar-10-batches-py", _BATCHES, ("test_batch",), "batches.meta", names_key=b"label_names",
                labels_key=b"labels"),
    ),
    "cifar100": (
        Version("cifar-100-binary", ("train.bin",), ("test.bin",), "fine_label_names.txt", label_bytes=2),
        Version("cifar-100-python", ("train",), ("test",), "meta", names_key=b"fine_label_names",
                labels_key=b"fine_labels"),
    ),
}
ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz or cifar-10-python.tar.gz",
            "cifar100": "cifar-100-binary.tar.gz or cifar-100-python.tar.gz"}
# The loader serves several commands whose flag for the data root differs; name each.
ROOT_FLAGS = "--data.root for train, --data-root for eval and quantize"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays; any other global is refused."""

    # _codecs.encode: how Python 3 writes bytes at pickle protocol 2 (the files themselves come from Python 2)
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    RECONSTRUCT = {"numpy.core.multiarray", "numpy._core.multiarray"}  # numpy 1.x and 2.x spell it differently

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in self.RECONSTRUCT:
            return _reconstruct
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it asks to run {module}.{name}, which a CIFAR batch never does")


def _reconstruct(cls, shape, dtype):
    """numpy's own pickle constructor for an array, for ``ndarray`` alone (the class the unpickler hands over)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("it asks for an array of another class than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def read_pickle(path: Path) -> dict:
    """One file of the Python version: its dict, read without running anything the file names."""
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UsageError(f"{path}: not a CIFAR batch of the Python version ({e}); re-extract the archive") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a CIFAR batch of the Python version (holds a {type(data).__name__}, not a "
                         "dict); re-extract the archive")
    return data


def _binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + PIXELS
    if data.size == 0 or data.size % record:
        raise UsageError(f"{path}: {data.size} bytes, not a whole number of {record}-byte CIFAR records; the file "
                         "is truncated or of the other CIFAR, re-extract the archive")
    data = data.reshape(-1, record)
    return data[:, label_bytes:].reshape(-1, 3, 32, 32), data[:, label_bytes - 1].astype(np.int64)


def _python(path: Path, version: Version) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    images, labels = batch.get(b"data"), batch.get(version.labels_key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != PIXELS or labels is None or len(labels) != len(images):
        raise UsageError(f"{path}: not a CIFAR batch ({version.labels_key.decode()} and a (N, {PIXELS}) uint8 "
                         "array expected); re-extract the archive")
    return images.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _names(folder: Path, version: Version) -> list[str]:
    path = folder / version.names
    if version.label_bytes:  # a text file, one name a line (CIFAR-10's ends with empty lines)
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    names = read_pickle(path).get(version.names_key)
    if not isinstance(names, list):
        raise UsageError(f"{path}: no {version.names_key.decode()} list; re-extract the archive")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_version(name: str, root: Path) -> tuple[Version, Path]:
    """The version of CIFAR ``name`` that ``root`` holds (itself, or one of the folders the archives unpack to)."""
    for version in VERSIONS[name]:
        for folder in (root, root / version.folder):
            if all((folder / f).is_file() for f in (*version.train, *version.val, version.names)):
                return version, folder
    raise FileNotFoundError(
        f"{root}: no {name} files (the folder {' or '.join(v.folder for v in VERSIONS[name])}, as {ARCHIVES[name]} "
        f"unpacks to); extract the archive and point the data root at that folder or its parent ({ROOT_FLAGS})")


class CIFAR(Dataset):
    """A CIFAR-10 or CIFAR-100 split as uint8 tensors of shape (3, 32, 32) with int labels (CIFAR-100: the fine
    labels). ``split`` is ``train`` (50,000 images) or ``val`` (the 10,000-image test set)."""

    channels = 3

    def __init__(self, name: str, root: str | os.PathLike | None, split: str = "train") -> None:
        if name not in VERSIONS:
            raise UsageError(f"{name!r} is not a CIFAR; use one of {', '.join(VERSIONS)}")
        if split not in ("train", "val"):
            raise UsageError(f"{name} split {split!r} is not valid; use train or val")
        if root is None:
            raise UsageError(f"{name} needs a data root: extract {ARCHIVES[name]} and point the data root at the "
                             f"folder it unpacks to ({ROOT_FLAGS})")
        version, folder = find_version(name, Path(root))
        read = (lambda p: _binary(p, version.label_bytes)) if version.label_bytes else (lambda p: _python(p, version))
        parts = [read(folder / f) for f in getattr(version, split)]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        self.classes = _names(folder, version)
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise UsageError(f"{folder}: labels run {labels.min()}..{labels.max()} but {version.names} names "
                             f"{len(self.classes)} classes; re-extract the archive")
        self.images = torch.from_numpy(images)  # (N, 3, 32, 32) uint8, contiguous: concatenate copied it
        self.targets = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
