"""A synthetic, learnable image-classification dataset for tests and benchmarks (no files needed).

Each class is a fixed random low-frequency pattern; a sample is its class pattern plus per-sample
noise, so a small network can learn it in a few steps while the data stays fully reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    """``num_samples`` uint8 images (channels, size, size) over ``num_classes`` classes.

    ``pattern_seed`` fixes the class patterns (share it between train and val); ``seed`` the noise.
    """

    def __init__(self, num_samples: int = 256, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                 seed: int = 0, noise: float = 0.25, pattern_seed: int = 0) -> None:
        if num_samples < 1 or num_classes < 1 or image_size < 1 or channels < 1:
            raise ValueError("SyntheticImages needs num_samples, num_classes, image_size and channels >= 1")
        coarse = torch.rand(num_classes, channels, 4, 4, generator=torch.Generator().manual_seed(pattern_seed))
        g = torch.Generator().manual_seed(seed + 1)
        patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.targets = torch.arange(num_samples) % num_classes
        noise_t = torch.randn(num_samples, channels, image_size, image_size, generator=g) * noise
        images = (patterns[self.targets] + noise_t).clamp(0, 1)
        self.images = (images * 255).round().to(torch.uint8)
        self.classes = [f"class_{i}" for i in range(num_classes)]
        self.channels = channels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
