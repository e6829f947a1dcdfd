"""Train and eval pipelines (torchvision transforms.v2) and batch-level Mixup/CutMix.

Train (paper appendix A.1): RandomResizedCrop + horizontal flip -> RandAugment(m9, mstd0.5) ->
float + normalize -> Random Erasing. Eval: resize the shorter side to size / crop_ratio
(224 / 0.875 = 256), then center crop. Mixup 0.8 / CutMix 1.0 (one of the two per batch) and
label smoothing act on whole batches, so they live in ``BatchMixer``, applied in the train loop.
"""

from __future__ import annotations

import copy
import math
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
        if aug.crop_padding:
            t.append(v2.RandomCrop(input_size, padding=aug.crop_padding))
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


def _is_deterministic(transform) -> bool:
    """Whether every step of a v2 Compose is a fixed function (so it can run on a stacked batch)."""
    fixed = (v2.Resize, v2.CenterCrop, v2.ToImage, v2.ToDtype, v2.Normalize, v2.RGB, v2.Grayscale)
    return isinstance(transform, v2.Compose) and all(type(t) in fixed for t in transform.transforms)


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


# torchvision's RandomErasing defaults: the erased box's share of the image area and its aspect ratio (h / w)
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10  # boxes drawn before giving up on a sample (nothing erased), as torchvision does


ERASING_DRAWS = 1 + 2 * ERASE_ATTEMPTS + 2  # uniforms per sample: erase or not, (area, ratio) per attempt, place


def draw_erasing(n: int, height: int, width: int, p: float, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Random Erasing boxes for ``n`` images of ``height`` x ``width``, drawn at once: (top, left, h, w) per row,
    integers, h = w = 0 where nothing is erased (``erasing_boxes`` of ``ERASING_DRAWS`` uniforms per sample)."""
    u = torch.rand(n, ERASING_DRAWS, generator=generator, device=device, dtype=torch.float64)
    return erasing_boxes(u, height, width, p)


def erasing_boxes(u: torch.Tensor, height: int, width: int, p: float) -> torch.Tensor:
    """Random Erasing boxes from uniforms ``u`` (N, ``ERASING_DRAWS``): (top, left, h, w) per row, integers,
    h = w = 0 where nothing is erased.

    torchvision's ``RandomErasing`` rule, vectorised: a sample is erased with probability ``p``; its box has an
    area uniform in ``ERASE_SCALE`` of the image and an aspect ratio log-uniform in ``ERASE_RATIO``, sides rounded
    to whole pixels; of ``ERASE_ATTEMPTS`` draws the first strictly inside the image is kept (none fits: nothing
    erased), and its position is uniform over the places it fits.
    """
    erased = u[:, 0] < p
    attempts = u[:, 1:1 + 2 * ERASE_ATTEMPTS].view(-1, ERASE_ATTEMPTS, 2)
    area = height * width * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * attempts[..., 0])
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * attempts[..., 1])
    h, w = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()  # round half to even, as Python's round
    fits = (h < height) & (w < width)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    erased &= fits.any(dim=1) & (h > 0) & (w > 0)  # a side rounded to 0 (tiny images) erases nothing
    h, w = torch.where(erased, h, 0).long(), torch.where(erased, w, 0).long()
    pos = u[:, -2:]
    top = (pos[:, 0] * (height - h + 1)).floor().long().clamp_(max=height - h)  # uniform in 0..height - h
    left = (pos[:, 1] * (width - w + 1)).floor().long().clamp_(max=width - w)
    return torch.stack([top, left, h, w], dim=1)


def erase(x: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with each image's box (a row of ``draw_erasing``) replaced by ``fill`` (same shape as ``x``,
    e.g. unit normal noise: RandomErasing's ``value="random"`` on a normalised image)."""
    top, left, h, w = boxes.unbind(1)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (N, W)
    return torch.where(in_rows[:, None, :, None] & in_cols[:, None, None, :], fill, x)


class ShiftFlip:
    """The small-image train pipeline for a whole batch of same-size uint8 tensors: convert channels, resize to
    ``size`` (center crop), shift (zero-pad every side by ``padding`` and crop ``size`` at a random place), flip
    horizontally with probability ``hflip``, scale to [0, 1], normalise, and erase a random box with probability
    ``erasing`` (filled with unit normal noise).

    The same result distribution as the per-sample v2 pipeline (``build_train_transform`` with
    random_resized_crop off and no RandAugment), at a small fraction of its cost: Python makes
    ~10 transform calls per image there, which on small images costs more than the network's training step.
    torchvision's v2 ops draw one crop for a whole batch, so the per-sample draws are made here, each from
    the sample's own seed (as ``SeededTransform`` seeds the per-sample pipeline), and applied in one gather.
    """

    def __init__(self, size: int, padding: int, hflip: float, mean, std, channels: int,
                 src_channels: int | None, interpolation: str, erasing: float = 0.0) -> None:
        self.size, self.padding, self.hflip, self.erasing = size, padding, hflip, erasing
        self.prepare = v2.Compose([
            *_channel_fix(src_channels, channels),
            v2.Resize(size, interpolation=interpolation_mode(interpolation), antialias=True), v2.CenterCrop(size),
        ])
        self.normalize = v2.Normalize(list(mean), list(std))
        self.emit_uint8 = False  # with_uint8_output() sets it

    def with_uint8_output(self) -> "ShiftFlip":
        """A copy returning the uint8 crops, unscaled: a GPU feed (``device_feed.PrefetchFeed``) copies a quarter of
        float32's bytes and scales and normalises them on the device, with the same ops as ``__call__``. Not with
        erasing, whose noise is drawn here after normalisation."""
        if self.erasing > 0:
            raise ValueError("ShiftFlip with erasing cannot defer its normalisation: the noise follows it")
        twin = copy.copy(self)
        twin.emit_uint8 = True
        return twin

    def draws(self, seed: int | None) -> tuple[int, int, bool]:
        """(top, left, flip) for one sample; from ``seed``, or the global RNG when it is None."""
        return self._draws(seed)[:3]

    def _draws(self, seed: int | None, channels: int = 1):
        """(top, left, flip, erasing uniforms, noise) for one sample, all from one generator; the erasing draws come
        last (and only with erasing on), so they leave the shift and flip of a seed as they were without them."""
        g = None if seed is None else torch.Generator().manual_seed(seed)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=g).tolist()
        flip = bool(torch.rand((), generator=g) < self.hflip)
        if self.erasing <= 0:
            return top, left, flip, None, None
        uniforms = torch.rand(ERASING_DRAWS, generator=g, dtype=torch.float64)  # the box, from erasing_boxes
        return top, left, flip, uniforms, torch.randn(channels, self.size, self.size, generator=g)

    def __call__(self, images: torch.Tensor, seeds: list[int | None]) -> torch.Tensor:
        x = self.prepare(images)  # (N, C, size, size) uint8
        if self.padding or self.hflip > 0 or self.erasing > 0 or None in seeds:  # (None: the draws use the global RNG)
            draws = [self._draws(s, x.shape[1]) for s in seeds]
            top, left, flip = (torch.tensor(v) for v in zip(*(d[:3] for d in draws)))
            p, line = self.padding, torch.arange(self.size)
            rows = (top[:, None] + line)[:, :, None]  # (N, size, 1) rows of the padded image
            cols = left[:, None] + torch.where(flip[:, None], line.flip(0), line)  # (N, size) flipped where drawn
            padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
            out = padded[torch.arange(len(x))[:, None, None], :, rows, cols[:, None, :]]  # (N, size, size, C)
        else:
            # nothing to draw (the demo's preset): the gather's result, in its layout, without the ~30 us per sample
            # that drawing costs (a generator per seed)
            out = x.permute(0, 2, 3, 1).contiguous()
        if self.emit_uint8:
            return out.permute(0, 3, 1, 2)
        out = self.normalize(out.permute(0, 3, 1, 2).float().div_(255))
        if self.erasing > 0:
            boxes = erasing_boxes(torch.stack([d[3] for d in draws]), self.size, self.size, self.erasing)
            out = erase(out, boxes, torch.stack([d[4] for d in draws]))
        return out


def batched_train_transform(aug, input_size: int, mean, std, channels: int, src_channels: int | None):
    """``ShiftFlip`` when ``aug`` asks for nothing more than it does (no random resized crop or RandAugment); else
    None, and the per-sample pipeline of ``build_train_transform`` applies."""
    if aug.random_resized_crop or aug.randaugment:
        return None
    return ShiftFlip(input_size, aug.crop_padding, aug.hflip, mean, std, channels, src_channels, aug.interpolation,
                     aug.random_erasing)


class SeededTransform(torch.utils.data.Dataset):
    """Apply a random transform with a seed chosen per sample by the sampler.

    The sampler yields ``(index, seed)``; the transform runs under ``torch.manual_seed(seed)`` in a
    forked RNG. The augmentation of a sample then depends only on (run seed, epoch, position), not
    on the number of workers or on what ran before, so a resumed run sees exactly the same images.

    Over in-memory tensor images (Fashion-MNIST, synthetic data) the DataLoader fetches whole batches
    (``__getitems__``): a ``batch_transform`` (``ShiftFlip``) then augments the batch in one go, and a
    deterministic ``transform`` (the eval pipeline) runs once on the stacked batch instead of per image.
    """

    def __init__(self, dataset, transform, batch_transform: ShiftFlip | None = None) -> None:
        self.dataset, self.transform, self.batch_transform = dataset, transform, batch_transform
        self.batchable = batch_transform is not None or _is_deterministic(transform)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list) -> list:
        indices, seeds = zip(*(k if isinstance(k, tuple) else (k, None) for k in keys))
        samples = [self.dataset[i] for i in indices]
        images = [image for image, _ in samples]
        if not (self.batchable and all(isinstance(im, torch.Tensor) and im.shape == images[0].shape for im in images)):
            return [(self._apply(image, seed), label) for (image, label), seed in zip(samples, seeds)]
        if self.batch_transform is not None:
            out = self.batch_transform(torch.stack(images), list(seeds))
        else:
            out = self.transform(torch.stack(images))
        return [(image, label) for image, (_, label) in zip(out.unbind(0), samples)]

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.dataset[index]
        return self._apply(image, seed), label

    def _apply(self, image, seed: int | None):
        """The per-sample pipeline, under ``seed`` when the sampler gave one."""
        if seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed would also queue CUDA seeding (with a stack capture)
            torch.default_generator.manual_seed(seed)
            return self.transform(image)
