"""How images are prepared for a model: the facts a checkpoint records and every command applies.

``Preprocess`` is plain data (no torchvision here); ``convnext.data.transforms.eval_transform`` turns it
into the one eval pipeline that ``convnext eval``, ``convnext predict`` and training's validation share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resampling filters an eval resize may use (torchvision's InterpolationMode names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass
class Preprocess:
    """How images must be prepared for this model (what predict/eval/export apply)."""

    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Eval resize: shorter side to input_size / crop_ratio, then center crop input_size (256 -> 224).
    crop_ratio: float = 0.875
    interpolation: str = "bicubic"
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD))
        return cls(**d)

    @property
    def resize_size(self) -> int:
        """Shorter side before the center crop: floor(input_size / crop_ratio), 224 / 0.875 = 256.

        Floor, as timm's eval transform and transformers' ConvNextImageProcessor (which reads the
        ``crop_pct`` we export) compute it, so all three score the same pixels.
        """
        if not 0.0 < self.crop_ratio <= 1.0:
            raise UsageError(f"preprocess crop_ratio={self.crop_ratio} must be in (0, 1]; 1.0 means no crop margin")
        return int(self.input_size / self.crop_ratio + 1e-6)


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for ``channels`` inputs: as published for RGB, their channel average otherwise
    (a stem adapted from RGB kernels sees inputs of the same scale; see ``convnext.weights.io``)."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels


def default_preprocess(channels: int = 3) -> Preprocess:
    """What a model without recorded preprocessing gets: 224 px, ImageNet statistics."""
    mean, std = imagenet_stats(channels)
    return Preprocess(mean=mean, std=std, channels=channels)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocess", "default_preprocess", "imagenet_stats"]
