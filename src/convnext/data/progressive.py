"""Progressive resizing: train the early epochs on smaller images, then grow them to the full size.

A convolutional network with global pooling takes any input size, and a step on a smaller image costs about its
share of the pixels (the 30-minute Fashion-MNIST recipe: 1.79x the images per second at 20 px as at 28 px). FFCV's
ImageNet recipes spend most epochs at a lower resolution and ramp it up near the end, so the last epochs train (and
batch norm settles) at the size the network is evaluated at. ``ResizeSchedule`` gives each epoch its size from the
run's length; ``shrink_batch`` makes a training batch that small on the device, after the data path's augmentation at
the full size: by resizing it (``resize``, FFCV's way) or by cutting a random window of that size out of every image
(``crop``: the objects keep their scale, the network sees part of each). Validation, evaluation and inference always
see the full size.

The size depends only on (epoch, epochs), so a resumed run trains every epoch at the size an uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .device_feed import shift_flip


@dataclass(frozen=True)
class ResizeSchedule:
    """Epochs before ``ramp[0]`` of the run train at ``low`` px; from there the size grows linearly to ``full``,
    reached at ``ramp[1]`` of the run (fractions of the epochs; an epoch's place is where it starts). Every size is
    rounded down to one the network accepts (``valid``: e.g. a multiple of the stem's patch size)."""

    low: int
    full: int
    ramp: tuple[float, float]
    valid: Callable[[int], bool] = lambda size: True

    def size(self, epoch: int, epochs: int) -> int:
        start, end = self.ramp
        place = epoch / max(epochs, 1)
        if place >= end:
            return self.full
        if place < start:
            return self.low
        size = int(self.low + (self.full - self.low) * (place - start) / (end - start))
        while size > self.low and not self.valid(size):
            size -= 1
        return size

    def cost(self, epoch: int, epochs: int) -> float:
        """Epoch ``epoch``'s steps relative to the first epoch's, by pixels: what ``opt.time_budget`` predicts with.
        Per-step work that does not scale with the pixels makes small images cost more than their share, so a
        fitted run ends under budget: the 30-minute Fashion-MNIST recipe trained at 1,297 img/s at 20 px and 778 at
        28 px (1.67x, against 1.96x the pixels), and its fitted runs ended after 1,527 and 1,548 of 1,800 s. Timing
        forward passes at each size was tried instead and was noisier than this (docs/recipes.md, tenth round)."""
        return (self.size(epoch, epochs) / self.size(0, epochs)) ** 2

    def validation_cost(self, epochs: int) -> float:
        """A validation batch (at the full size) relative to one of the first epoch's, by pixels."""
        return (self.full / self.size(0, epochs)) ** 2

    def sizes(self, epochs: int) -> list[int]:
        """Every epoch's size, in order (for the run's log)."""
        return [self.size(e, epochs) for e in range(epochs)]


SHRINK_MODES = ("resize", "crop")


def shrink_batch(images: torch.Tensor, size: int, mode: str = "resize") -> torch.Tensor:
    """``images`` (N, C, H, W) made ``size`` x ``size`` by ``mode``: ``resize_batch`` or ``crop_batch``."""
    return resize_batch(images, size) if mode == "resize" else crop_batch(images, size)


def crop_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` window of every image, each at its own place drawn uniformly (by the global CPU
    generator, which the trainer's checkpoints keep, so a resumed run draws what an uninterrupted one would)."""
    n, _, h, w = images.shape
    if h == size and w == size:
        return images
    top = torch.randint(0, h - size + 1, (n,)).to(images.device)
    left = torch.randint(0, w - size + 1, (n,)).to(images.device)
    unflipped = torch.zeros(n, dtype=torch.bool, device=images.device)
    return shift_flip(images, top, left, unflipped, padding=0, size=size)  # the on-device shifts' gather


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of normalised images (N, C, H, W) resized to ``size`` x ``size``: bilinear with antialiasing (a
    plain bilinear shrink would alias fine texture), as torchvision's ``Resize`` does on tensors."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


__all__ = ["SHRINK_MODES", "ResizeSchedule", "crop_batch", "resize_batch", "shrink_batch"]
