"""Image-folder datasets (``root/<class>/<image>``) that survive bad files.

Every file is decoded once when the dataset is built (``verify=True``): truncated, zero-byte,
non-image and undecodable files are skipped with one warning each and counted in ``bad_files``
(the run log records the count), or rejected with an error under ``strict=True``. Images in other
modes (palette, RGBA, CMYK, 16-bit, grayscale) are converted to the channels the model expects.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .images import IMAGE_EXTENSIONS, load_image


class BadImageWarning(UserWarning):
    """A file in an image folder could not be used and was skipped."""


@contextlib.contextmanager
def print_warnings_as_lines():
    """Collect the warnings raised inside (every BadImageWarning, not just the first of each), then
    print each as one plain ``warning: ...`` line on stderr instead of Python's two-line format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadImageWarning)
        yield
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


@dataclass
class BadFile:
    path: str
    reason: str


@dataclass
class FolderScan:
    classes: list[str]
    samples: list[tuple[str, int]]
    bad: list[BadFile] = field(default_factory=list)


def scan_folder(root: str | os.PathLike, channels: int = 3, verify: bool = True, strict: bool = False) -> FolderScan:
    """List ``root/<class>/*`` images; raise a clear error for an empty class or an empty dataset."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found; pass a directory laid out as ROOT/CLASS/IMAGE")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UsageError(f"{root}: no class folders; lay the images out as {root}/CLASS_NAME/IMAGE.jpg")
    samples: list[tuple[str, int]] = []
    bad: list[BadFile] = []

    def reject(path: Path, reason: str) -> None:
        if strict:
            raise UsageError(f"{path}: {reason}; remove or fix the file, or drop --data.strict to skip bad files")
        warnings.warn(f"skipping {path}: {reason}", BadImageWarning, stacklevel=3)
        bad.append(BadFile(str(path), reason))

    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        good = 0
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                reject(path, f"not an image file (extension {path.suffix or 'none'})")
                continue
            if path.stat().st_size == 0:
                reject(path, "zero-byte file")
                continue
            if verify:
                try:
                    load_image(path, channels)
                except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                    reject(path, f"cannot be decoded ({type(e).__name__}: {e})")
                    continue
            samples.append((str(path), label))
            good += 1
        if good == 0:
            raise UsageError(
                f"{root / name}: class folder holds no usable images ({len(files)} file(s)); "
                "add images or remove the folder"
            )
    return FolderScan(classes, samples, bad)


class ImageFolder(Dataset):
    """``root/<class>/<image>`` as (PIL image, label); classes are the sorted folder names."""

    def __init__(self, root: str | os.PathLike, channels: int = 3, verify: bool = True, strict: bool = False) -> None:
        scan = scan_folder(root, channels=channels, verify=verify, strict=strict)
        self.root = Path(root)
        self.classes = scan.classes
        self.samples = scan.samples
        self.bad_files = scan.bad
        self.channels = channels
        self.targets = torch.tensor([label for _, label in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        # A file that broke after the scan (or was never verified) is replaced by the next
        # readable sample so that batch shapes, and therefore the run, stay deterministic.
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return load_image(path, self.channels), label
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"skipping {path}: cannot be decoded ({type(e).__name__}: {e})", BadImageWarning)
        raise UsageError(f"{self.root}: no image in the dataset can be decoded any more")
