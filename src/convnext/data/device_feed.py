"""Training batches delivered on the training device: the one thing between the train split and the step.

Two feeds, both iterables of ``(images, labels)`` already on the device, both following the sampler's order
(``train.distributed.ShardedSampler``: ``(index, seed)`` pairs, per-rank shards, ``epoch``/``start`` read when
an iterator is created, so DDP and mid-epoch resume work unchanged):

- ``PrefetchFeed`` wraps the DataLoader. On CUDA each batch is copied from pinned memory on a side stream
  while the step works on the previous one; uint8 batches (``ShiftFlip`` defers its normalisation when the
  device is a GPU: a quarter of float32's bytes cross PCIe) are scaled and normalised on the device. On the
  CPU it passes the loader's batches through unchanged.
- ``DeviceResidentFeed`` (``data.on_device``): the whole uint8 split and its labels live on the device and each
  batch is gathered and augmented there in batch form (``BatchAugment``): random resized crop or pad-and-shift,
  horizontal flip, grey -> RGB, normalisation, random erasing. Its randomness is a per-batch generator seeded from the
  sampler's seed for the batch's first position, so it is a pure function of (run seed, epoch, position, rank)
  and a resumed run sees exactly the batches of an uninterrupted one. Mixup/CutMix stay in ``BatchMixer``.

``train_feed`` picks one from the run's data/aug settings; the trainer iterates it where it iterated the loader.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import UsageError
from .assembly import DataBundle, make_loader
from .transforms import SeededTransform, ShiftFlip, _channel_fix, draw_erasing, erase, interpolation_mode

# torchvision's RandomResizedCrop default aspect ratios (the per-sample pipeline uses them too)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # boxes drawn per sample before falling back to the center crop, as torchvision does
GRID_MODES = ("nearest", "bilinear", "bicubic")  # the filters grid_sample has (no lanczos)


class Normalize:
    """uint8 (or float 0..255) images -> float32 ``(x / 255 - mean) / std`` on ``device``.

    The same elementwise ops, in the same order, as ``ShiftFlip``'s ``.float().div_(255)`` then
    ``v2.Normalize``, so deferring normalisation to the device changes no bit. 255 is a device tensor rather
    than a Python number: CUDA divides by a host scalar through its reciprocal, which is off by an ulp.
    """

    def __init__(self, mean, std, device: torch.device) -> None:
        if len(mean) != len(std):
            raise UsageError(f"mean {tuple(mean)} and std {tuple(std)} need the same number of values")
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(-1, 1, 1)
        self.scale = torch.tensor([255.0], device=device).view(1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # out of place first: x may be an expanded (grey -> RGB) view, which in-place ops cannot write
        return (x.float() / self.scale).sub_(self.mean).div_(self.std)


# ---- the DataLoader onto the device ----------------------------------------------------------------------------

class _CopyStream:
    """Where host-to-device copies run: a CUDA side stream, so the copy of the next batch overlaps the step on the
    current stream; elsewhere nothing (a CPU "copy" is free, and the same loop runs with the stream parts off)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = None
        if device.type == "cuda":
            self.stream = torch.cuda.Stream(device)
            # work queued so far (the normalisation constants, the model's setup) comes before any copy
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def hand_over(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Make the current stream wait for the copies of ``tensors`` and mark them as used there: their memory
        came from the side stream's pool, and without ``record_stream`` the allocator could hand it to the next
        copy while the step still reads it."""
        if self.stream is None:
            return tensors
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_stream(self.stream)
        for t in tensors:
            t.record_stream(current)
        return tensors


class PrefetchFeed:
    """A DataLoader's ``(images, labels)`` batches on ``device``, the next one copied while this one is used.

    uint8 image batches are scaled and normalised with ``mean``/``std`` on the device; float batches arrive as
    the loader made them. ``prefetch`` (default: on CUDA) turns the copy-ahead on; off, each batch is moved when
    it is asked for, which on the CPU means the loader's tensors themselves.
    """

    def __init__(self, loader, device: torch.device | str, mean=None, std=None, prefetch: bool | None = None) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.normalize = Normalize(mean, std, self.device) if mean is not None else None
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self._copy_stream: _CopyStream | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)  # now: the sampler's epoch/start as the caller just set them
        if not self.prefetch:
            return (self._to_device(images, labels) for images, labels in batches)
        if self._copy_stream is None:
            self._copy_stream = _CopyStream(self.device)
        return self._prefetched(batches, self._copy_stream)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # non_blocking: from the loader's pinned memory the copy is a DMA the host does not wait for
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            if self.normalize is None:
                raise UsageError("uint8 image batches need the normalisation mean/std; pass mean and std")
            images = self.normalize(images)
        return images, labels

    def _prefetched(self, batches, stream: _CopyStream):
        def load():
            batch = next(batches, None)
            if batch is None:
                return None
            with stream.context():
                return self._to_device(*batch)

        ahead = load()
        while ahead is not None:
            # hand over before queueing the next copy: the current stream must wait for this batch's copy only
            current = stream.hand_over(ahead)
            ahead = load()
            yield current


def deferred_normalization(dataset):
    """``dataset`` with its batched small-image pipeline (``ShiftFlip``) returning uint8 crops, for a feed that
    normalises on the device; any other dataset as it is (its per-sample pipeline normalises on the host)."""
    if (isinstance(dataset, SeededTransform) and isinstance(dataset.batch_transform, ShiftFlip)
            and dataset.batch_transform.erasing == 0):  # erasing's noise follows the normalisation: left on the host
        return SeededTransform(dataset.dataset, dataset.transform, dataset.batch_transform.with_uint8_output())
    return dataset


# ---- the train split on the device -----------------------------------------------------------------------------

def draw_shifts(n: int, padding: int, hflip: float, generator: torch.Generator, device: torch.device):
    """(top, left, flip) per sample: offsets into the image padded by ``padding`` (uniform in 0..2*padding, as
    ``ShiftFlip`` draws them) and a flip with probability ``hflip``."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < hflip
    return offsets[:, 0], offsets[:, 1], flip


def shift_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
               padding: int, size: int | None = None) -> torch.Tensor:
    """Each image of ``x`` (N, C, S, S) zero-padded by ``padding`` and cropped at (top, left) to ``size`` (default
    S: a shift), mirrored where ``flip``: one gather, any dtype, output contiguous NCHW."""
    n, c = x.shape[0], x.shape[1]
    size = x.shape[-1] if size is None else size
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    line = torch.arange(size, device=x.device)
    rows = top[:, None] + line  # (N, S)
    cols = left[:, None] + torch.where(flip[:, None], line.flip(0), line)  # (N, S), reversed where flipped
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return x[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def draw_boxes(n: int, height: int, width: int, scale_min: float, generator: torch.Generator,
               device: torch.device, ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """RandomResizedCrop boxes (x0, y0, w, h) in pixels, one row per sample, all drawn on ``device``.

    Area uniform in [scale_min, 1] of the image, aspect ratio log-uniform in ``ratio``; of ``CROP_ATTEMPTS`` draws
    the first that fits is kept, and a sample none fits gets the whole image, its ratio clamped to ``ratio`` and
    centered (torchvision's rule). Boxes are continuous (grid_sample reads between pixels), not whole pixels.
    """
    u = torch.rand(n, CROP_ATTEMPTS, 2, generator=generator, device=device)
    area = height * width * (scale_min + (1 - scale_min) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # the fallback, a function of the image size only: computed on the host, selected on the device (no sync)
    fw, fh = float(width), float(height)
    if width / height < ratio[0]:
        fh = width / ratio[0]
    elif width / height > ratio[1]:
        fw = height * ratio[1]
    pos = torch.rand(n, 2, generator=generator, device=device)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    x0 = torch.where(found, (width - w) * pos[:, 0], (width - fw) / 2)
    y0 = torch.where(found, (height - h) * pos[:, 1], (height - fh) / 2)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Each float image of ``x`` (N, C, H, W) cropped to its box (x0, y0, w, h in pixels, continuous), resized
    to ``size`` x ``size`` with ``mode`` and mirrored where ``flip``: one affine grid per sample, one grid_sample.

    With align_corners=False, normalised coordinate -1..1 spans the image's outer pixel edges 0..W, so the box
    [x0, x0 + w] is scale w / W around center (2 * x0 + w) / W - 1; a flip negates the scale. No antialiasing:
    right for crops enlarged to ``size`` (small images); strongly shrunk crops alias a little.
    """
    n, _, height, width = x.shape
    x0, y0, w, h = boxes.to(x.dtype).unbind(1)
    zero = torch.zeros_like(w)
    sx = torch.where(flip, -w, w) / width
    theta = torch.stack([torch.stack([sx, zero, (2 * x0 + w) / width - 1], dim=1),
                         torch.stack([zero, h / height, (2 * y0 + h) / height - 1], dim=1)], dim=1)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    # border: a bilinear tap half a pixel outside the box's edge reads the edge pixel, not black
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


class BatchAugment:
    """The train augmentation of a uint8 batch, in batch form on its own device: random resized crop (or
    pad-and-shift by ``padding`` when ``random_resized_crop`` is off), horizontal flip with probability ``hflip``,
    grey -> RGB when ``channels`` is 3 and the images have 1, scaling and normalisation, then Random Erasing with
    probability ``erasing`` (``transforms.draw_erasing``'s boxes filled with unit normal noise, as the per-sample
    pipeline's ``RandomErasing(value="random")``).

    Every draw comes from the ``generator`` passed in, so a batch is a pure function of its images and the
    generator's seed. ``interpolation`` filters the resized crops (nearest, bilinear or bicubic).
    """

    def __init__(self, size: int, mean, std, channels: int, *, random_resized_crop: bool, scale_min: float = 0.08,
                 padding: int = 0, hflip: float = 0.5, interpolation: str = "bilinear", erasing: float = 0.0,
                 device: torch.device | str = "cpu") -> None:
        if random_resized_crop and interpolation not in GRID_MODES:
            raise UsageError(f"data.on_device resizes crops with grid_sample, which has no {interpolation!r} filter; "
                             f"set aug.interpolation to one of {', '.join(GRID_MODES)}")
        self.size, self.channels, self.random_resized_crop = size, channels, random_resized_crop
        self.scale_min, self.padding, self.hflip, self.mode = scale_min, padding, hflip, interpolation
        self.erasing = erasing
        self.normalize = Normalize(mean, std, torch.device(device))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = len(images), images.device
        if self.random_resized_crop:
            boxes = draw_boxes(n, images.shape[-2], images.shape[-1], self.scale_min, generator, device)
            flip = torch.rand(n, generator=generator, device=device) < self.hflip
            out = crop_resize(images.float(), boxes, flip, self.size, self.mode)
            if self.mode == "bicubic":  # cubic overshoots; the uint8 per-sample pipeline clamps by rounding to 0..255
                out = out.clamp_(0, 255)
        else:
            top, left, flip = draw_shifts(n, self.padding, self.hflip, generator, device)
            out = shift_flip(images, top, left, flip, self.padding)
        if out.shape[1] != self.channels:  # grey stored once, repeated here (exactly what v2.RGB does first)
            out = out.expand(-1, self.channels, -1, -1)
        out = self.normalize(out)
        if self.erasing > 0:  # drawn after the crops and flips: a seed's crops are the same with erasing off
            boxes = draw_erasing(n, self.size, self.size, self.erasing, generator, device)
            out = erase(out, boxes, torch.randn(out.shape, generator=generator, device=device))
        return out


def split_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole ``dataset`` as one uint8 (N, C, H, W) tensor and int64 labels.

    In-memory datasets (Fashion-MNIST, synthetic; ``Subset`` views of them) are indexed directly; any other is
    read sample by sample (a folder: every file decoded once) and must hold images of one size.
    """
    indices, base = None, dataset
    while isinstance(base, torch.utils.data.Subset):  # limit_samples / split_holdout views
        idx = torch.as_tensor(base.indices, dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        base = base.dataset
    images, targets = getattr(base, "images", None), getattr(base, "targets", None)
    if (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4
            and isinstance(targets, torch.Tensor) and len(targets) == len(images)):
        if indices is not None:
            images, targets = images[indices], targets[indices]
        return images, targets.long()
    out, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)  # a PIL image (folders); anything else is refused below
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise UsageError(f"data.on_device needs 8-bit images, but sample {i} is a {image.dtype} tensor of shape "
                             f"{tuple(image.shape)}; set data.on_device false")
        if out and image.shape != out[0].shape:
            raise UsageError(f"data.on_device needs train images of one size, but the split holds "
                             f"{tuple(out[0].shape[1:])} and {tuple(image.shape[1:])} images (sample {i}); resize them "
                             "to one size or set data.on_device false")
        out.append(image)
        labels.append(int(label))
    return torch.stack(out), torch.tensor(labels, dtype=torch.long)


def _store(images: torch.Tensor, channels: int, size: int | None, interpolation: str) -> torch.Tensor:
    """What the device keeps: ``images`` in the model's channels, except grey kept as grey for an RGB model (the
    batch repeats it, a third of the memory); with ``size``, also resized and center-cropped to it, once, with
    ``ShiftFlip``'s resize (the pad-and-shift path: the bytes are then exactly ShiftFlip's)."""
    src = images.shape[1]
    steps = [] if (src == 1 and channels == 3) else _channel_fix(src, channels)
    if size is not None:
        steps += [v2.Resize(size, interpolation=interpolation_mode(interpolation), antialias=True), v2.CenterCrop(size)]
    if not steps:
        return images
    prepare = v2.Compose(steps)
    return torch.cat([prepare(chunk) for chunk in images.split(4096)])  # chunks: bounded float scratch memory


def _check_fits(nbytes: int, device: torch.device) -> None:
    if device.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:  # leave the other half for the model, its activations and the optimizer
        raise UsageError(f"data.on_device: the train split needs {nbytes / 2**30:.2f} GiB on {device} but only "
                         f"{free / 2**30:.2f} GiB is free; set data.on_device false (or lower data.limit_train)")


class DeviceResidentFeed:
    """The train split held on ``device`` (uint8 images, int64 labels), served in ``sampler`` order as augmented
    batches of ``batch_size`` (full batches only, as the train loader's drop_last).

    Batch b of an epoch takes its draws from a generator on the device seeded with the sampler's seed for the
    batch's first position, which ``ShardedSampler`` derives from (run seed, epoch, rank, position): no host
    round trip, and a run resumed mid-epoch (``sampler.start`` a multiple of ``batch_size``) replays the batches
    an uninterrupted run would have drawn.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler, batch_size: int, augment: BatchAugment,
                 device: torch.device | str) -> None:
        self.device = torch.device(device)
        _check_fits(images.numel() * images.element_size(), self.device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.sampler, self.batch_size, self.augment = sampler, batch_size, augment

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        keys = list(self.sampler)  # now: the sampler's epoch/start as the caller just set them
        count = len(keys) // self.batch_size * self.batch_size
        if keys and not isinstance(keys[0], tuple):
            raise UsageError("the on-device feed needs a sampler yielding (index, seed) pairs (a shuffling "
                             "ShardedSampler); use the DataLoader for evaluation")
        order = torch.tensor([index for index, _ in keys[:count]], dtype=torch.long)
        if self.device.type == "cuda":
            order = order.pin_memory()  # a pinned source: the copy is queued, the host does not wait for it
        order = order.to(self.device, non_blocking=True)
        seeds = [keys[start][1] for start in range(0, count, self.batch_size)]
        return self._batches(order, seeds)

    def _batches(self, order: torch.Tensor, seeds: list[int]):
        generator = torch.Generator(device=self.device)
        for b, seed in enumerate(seeds):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            generator.manual_seed(seed)  # host-side state: seeding a CUDA generator does not synchronise
            yield self.augment(self.images[idx], generator), self.labels[idx]


def resident_feed(bundle: DataBundle, sampler, data, aug, device: torch.device | str) -> DeviceResidentFeed:
    """``DeviceResidentFeed`` over ``bundle``'s train split with ``data``/``aug``'s settings (duck-typed
    ``train.config.DataConfig`` / ``AugmentConfig``, as ``build_data`` takes them)."""
    if aug.randaugment:
        raise UsageError("data.on_device cannot run RandAugment on the device; set aug.randaugment false, or "
                         "data.on_device false")
    device = torch.device(device)
    dataset = bundle.train.dataset if isinstance(bundle.train, SeededTransform) else bundle.train
    images, labels = split_tensors(dataset)
    size = None if aug.random_resized_crop else data.image_size
    images = _store(images, bundle.in_chans, size, aug.interpolation)
    augment = BatchAugment(data.image_size, bundle.mean, bundle.std, bundle.in_chans,
                           random_resized_crop=aug.random_resized_crop, scale_min=aug.crop_scale_min,
                           padding=aug.crop_padding, hflip=aug.hflip, interpolation=aug.interpolation,
                           erasing=aug.random_erasing, device=device)
    return DeviceResidentFeed(images, labels, sampler, data.batch_size, augment, device)


def train_feed(bundle: DataBundle, sampler, data, aug, device: torch.device | str):
    """The run's training batches on ``device``, in ``sampler`` order: ``DeviceResidentFeed`` with
    ``data.on_device``, else the DataLoader (``make_loader``, drop_last) in a ``PrefetchFeed``, its small-image
    pipeline sending uint8 when the device is a GPU. Iterate it where the train loader was iterated; set the
    sampler's ``epoch``/``start`` before each ``iter()``."""
    device = torch.device(device)
    if getattr(data, "on_device", False):
        return resident_feed(bundle, sampler, data, aug, device)
    dataset = deferred_normalization(bundle.train) if device.type == "cuda" else bundle.train
    loader = make_loader(dataset, sampler, data.batch_size, data.workers, device, True)
    return PrefetchFeed(loader, device, bundle.mean, bundle.std)


__all__ = ["BatchAugment", "DeviceResidentFeed", "Normalize", "PrefetchFeed", "crop_resize", "deferred_normalization",
           "draw_boxes", "draw_shifts", "resident_feed", "shift_flip", "split_tensors", "train_feed"]
