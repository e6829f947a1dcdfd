"""Train and eval pipelines (torchvision transforms.v2) and batch-level Mixup/CutMix.

Train (paper appendix A.1): RandomResizedCrop + horizontal flip -> RandAugment(m9, mstd0.5) ->
float + normalize -> Random Erasing. Eval: resize the shorter side to size / crop_ratio
(224 / 0.875 = 256), then center crop. Mixup 0.8 / CutMix 1.0 (one of the two per batch) and
label smoothing act on whole batches, so they live in ``BatchMixer``, applied in the train loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from ..errors import UsageError
from ..preprocess import INTERPOLATIONS, Preprocess


def interpolation_mode(name: str) -> InterpolationMode:
    if name not in INTERPOLATIONS:
        raise UsageError(f"interpolation {name!r} is not supported; use one of {', '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


class RandAugmentMstd(v2.RandAugment):
    """RandAugment whose magnitude is drawn per image from N(magnitude, magnitude_std), as in the
    paper's "rand-m9-mstd0.5" policy; torchvision's RandAugment alone uses a fixed magnitude."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, magnitude_std: float = 0.5, **kw) -> None:
        super().__init__(num_ops=num_ops, magnitude=magnitude, **kw)
        self.mean_magnitude = magnitude
        self.magnitude_std = magnitude_std

    def forward(self, *inputs):
        if self.magnitude_std > 0:
            m = torch.normal(float(self.mean_magnitude), float(self.magnitude_std), ()).item()
            self.magnitude = int(min(max(round(m), 0), self.num_magnitude_bins - 1))
        return super().forward(*inputs)


def _channel_fix(src_channels: int | None, channels: int) -> list:
    if src_channels == channels or src_channels is None:
        return []
    if channels == 3 and src_channels == 1:
        return [v2.RGB()]  # grayscale repeated into 3 channels
    if channels == 1:
        return [v2.Grayscale(num_output_channels=1)]
    raise ValueError(f"cannot convert {src_channels}-channel images to {channels} channels; "
                     f"set model.overrides.in_chans to {src_channels}")


def build_train_transform(aug, input_size: int, mean, std, channels: int, src_channels: int | None = None):
    """``aug`` is a ``train.config.AugmentConfig``; images come in as PIL or uint8 CHW tensors."""
    interp = interpolation_mode(aug.interpolation)
    t: list = [v2.ToImage(), *_channel_fix(src_channels, channels)]
    if aug.random_resized_crop:
        t.append(v2.RandomResizedCrop(input_size, scale=(aug.crop_scale_min, 1.0), interpolation=interp, antialias=True))
    else:
        t += [v2.Resize(input_size, interpolation=interp, antialias=True), v2.CenterCrop(input_size)]
    if aug.hflip > 0:
        t.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.randaugment:
        # its affine ops support only nearest/bilinear on tensors
        ra_interp = InterpolationMode.NEAREST if interp == InterpolationMode.NEAREST else InterpolationMode.BILINEAR
        t.append(RandAugmentMstd(aug.randaugment_n, aug.randaugment_m, aug.randaugment_mstd, interpolation=ra_interp))
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if aug.random_erasing > 0:
        # erased pixels get per-pixel normal noise, matching the normalized image statistics
        t.append(v2.RandomErasing(p=aug.random_erasing, value="random"))
    return v2.Compose(t)


def eval_transform(pre: Preprocess, src_channels: int | None = None):
    """The one eval pipeline (validation in training, ``convnext eval``, ``convnext predict``): resize the
    shorter side to ``pre.resize_size``, center crop ``pre.input_size``, scale to [0, 1], normalise.

    Takes PIL images or uint8 CHW tensors; ``src_channels`` converts 1 <-> 3 channel data to ``pre.channels``.
    """
    if len(pre.mean) != pre.channels or len(pre.std) != pre.channels:
        raise UsageError(f"preprocess mean {pre.mean} / std {pre.std} need one value per channel ({pre.channels}); "
                         "fix the checkpoint metadata")
    # Resize and crop before ToImage: a PIL image is resampled by PIL, as timm's eval transform and
    # transformers' image processor do (uint8 tensors, e.g. Fashion-MNIST, are resized as tensors).
    return v2.Compose([
        *_channel_fix(src_channels, pre.channels),
        v2.Resize(pre.resize_size, interpolation=interpolation_mode(pre.interpolation), antialias=True),
        v2.CenterCrop(pre.input_size),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std)),
    ])


@dataclass
class BatchMixer:
    """Mixup / CutMix (one per batch, chosen with ``switch_prob``) plus label smoothing -> soft targets.

    Returns ``(images, targets)`` with targets of shape (batch, num_classes), each row summing to 1.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    prob: float = 1.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        mixers = []
        if self.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes))
        if self.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes))
        if len(mixers) == 2:
            self._mix = v2.RandomChoice(mixers, p=[1 - self.switch_prob, self.switch_prob])
        else:
            self._mix = mixers[0] if mixers else None

    @property
    def active(self) -> bool:
        return self._mix is not None or self.label_smoothing > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mix is not None and (self.prob >= 1 or torch.rand(()).item() < self.prob):
            images, targets = self._mix(images, labels)
        else:
            targets = torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        if self.label_smoothing > 0:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return images, targets


class SeededTransform(torch.utils.data.Dataset):
    """Apply a random transform with a seed chosen per sample by the sampler.

    The sampler yields ``(index, seed)``; the transform runs under ``torch.manual_seed(seed)`` in a
    forked RNG. The augmentation of a sample then depends only on (run seed, epoch, position), not
    on the number of workers or on what ran before, so a resumed run sees exactly the same images.
    """

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.dataset[index]
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed would also queue CUDA seeding (with a stack capture)
            torch.default_generator.manual_seed(seed)
            return self.transform(image), label
