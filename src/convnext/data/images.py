"""The one image loader: files, directories and globs in; decoded, model-ready tensors out.

Every odd file users have is handled once, here: JPEG/PNG/WebP/BMP/GIF/TIFF, grayscale, palette, RGBA
(composited on white), CMYK, 16-bit PNG, and the EXIF orientation tag phones write instead of rotating
pixels. A file that cannot be decoded raises ``ImageError`` naming the file and the reason, so batch
callers can report it and carry on with the rest.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError
from ..preprocess import Preprocess
from .transforms import eval_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
# Transparent pixels often carry arbitrary colour; composite on white, as a viewer shows them.
BACKGROUND = (255, 255, 255)


class ImageError(UsageError):
    """One input file that is not a usable image; the message names the file and what is wrong."""


def _to_8bit(im: Image.Image) -> Image.Image:
    # 16/32-bit grayscale (PNG 16-bit opens as I;16 or I): map the full 0..65535 range to 0..255,
    # keeping the image's own contrast (PIL's convert("L") would clip everything above 255 to white).
    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.clip(a, 0.0, 1.0) * 255.0
    else:
        a = a.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def load_image(path: str | os.PathLike, channels: int = 3) -> Image.Image:
    """Decode one image file into an upright 8-bit PIL image with ``channels`` (1 -> "L", 3 -> "RGB")."""
    if channels not in (1, 3):
        raise UsageError(f"channels={channels} is not supported; images load as 1 (grayscale) or 3 (RGB) channels")
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Large photos (PIL warns above ~89 MP) are fine; only its hard limit (DecompressionBombError) refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # full decode now: truncated files pass Image.open and fail here
                im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; check the file's permissions") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read (supported: {', '.join(IMAGE_EXTENSIONS)})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused, image is too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports truncated and corrupt data as OSError/SyntaxError with its own wording.
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from None

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        im = Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def collect_images(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, directories and glob patterns into image paths, in a stable order.

    Files named explicitly are kept whatever their extension (a non-image then gets its own error);
    directories and globs contribute files with an image extension. Returns (paths, problems), where
    problems are (input, reason) for inputs that matched nothing. Duplicates are dropped.
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(p)

    def is_image(p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS

    for item in inputs:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(q for q in p.glob(pattern) if is_image(q))
            if not found:
                problems.append((text, f"directory holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            for q in found:
                add(q)
        elif p.exists():
            add(p)
        elif glob.has_magic(text):
            found = sorted(Path(q) for q in glob.glob(text, recursive=True))
            found = [q for q in found if is_image(q)]
            if not found:
                problems.append((text, "pattern matches no image files"))
            for q in found:
                add(q)
        else:
            problems.append((text, "no such file or directory"))
    return paths, problems


# Resizing the shorter side of a 1 x 100,000 strip to 256 px would allocate gigabytes; refuse such shapes.
MAX_ASPECT_RATIO = 50


def load_tensor(path: str | os.PathLike, pre: Preprocess, transform: Callable | None = None) -> torch.Tensor:
    """``load_image`` + ``eval_transform``: one file as the model's input tensor (C, H, W).

    Any failure, decoding or preprocessing, is an ImageError naming the file.
    """
    transform = transform or eval_transform(pre)
    image = load_image(path, channels=pre.channels)
    w, h = image.size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageError(f"{path}: {w}x{h} is too elongated to resize and center-crop (aspect ratio over "
                         f"{MAX_ASPECT_RATIO}:1); crop it first")
    try:
        return transform(image)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ImageError(f"{path}: cannot preprocess {w}x{h} {image.mode} image ({e})") from None


def load_batch(paths: Sequence[str | os.PathLike], pre: Preprocess) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Stack the readable files into one batch; unreadable ones come back as (path, reason)."""
    transform = eval_transform(pre)
    tensors, errors = [], []
    for p in paths:
        try:
            tensors.append(load_tensor(p, pre, transform))
        except ImageError as e:
            errors.append((os.fspath(p), str(e)))
    batch = torch.stack(tensors) if tensors else torch.empty(0, pre.channels, pre.input_size, pre.input_size)
    return batch, errors


__all__ = [
    "IMAGE_EXTENSIONS", "MAX_ASPECT_RATIO", "ImageError", "collect_images", "load_batch", "load_image", "load_tensor",
]
