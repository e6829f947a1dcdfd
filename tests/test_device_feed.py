"""The GPU input pipeline (data/device_feed.py): the prefetching loader feed and the device-resident train split.

Everything here runs on the CPU, where the same code runs with the CUDA stream parts off; the checks that need a
GPU (side-stream copies, no host synchronisation) are marked and skipped without one.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from convnext.data import SeededTransform, SyntheticImages, build_train_transform
from convnext.data.assembly import DataBundle, build_mixer, make_loader
from convnext.data.datasets import limit_samples, split_holdout
from convnext.data.device_feed import (BatchAugment, DeviceResidentFeed, Normalize, PrefetchFeed, crop_resize,
                                       deferred_normalization, draw_boxes, resident_feed, split_tensors, train_feed)
from convnext.data.transforms import ShiftFlip, batched_train_transform
from convnext.errors import UsageError
from convnext.preprocess import Preprocess
from convnext.train.config import AugmentConfig, DataConfig, TrainConfig, load_config, resume_conflicts
from convnext.train.distributed import ShardedSampler

CPU = torch.device("cpu")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Tensors(torch.utils.data.Dataset):
    """An in-memory uint8 dataset like Fashion-MNIST (``images``/``targets`` tensors)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None = None, classes: int = 4) -> None:
        self.images = images
        self.targets = torch.arange(len(images)) % classes if targets is None else targets
        self.classes = [f"c{i}" for i in range(classes)]
        self.channels = images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


class Pictures(torch.utils.data.Dataset):
    """A folder-like dataset: PIL images, any sizes."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        g = torch.Generator().manual_seed(0)
        self.arrays = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy() for w, h in sizes]
        self.classes, self.channels = ["a", "b"], 3

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i):
        return Image.fromarray(self.arrays[i]), i % 2


def small_aug(**kw) -> AugmentConfig:
    base = dict(random_resized_crop=False, randaugment=False, random_erasing=0.0, mixup=0.0, cutmix=0.0,
                label_smoothing=0.0, interpolation="bilinear", hflip=0.0, crop_padding=0)
    base.update(kw)
    return AugmentConfig(**base)


def bundle_of(ds, size: int, aug: AugmentConfig, channels: int, mean=None, std=None) -> DataBundle:
    """What ``build_data`` makes of ``ds`` for a model taking ``channels`` channels at ``size`` px."""
    mean, std = mean or (0.3,) * channels, std or (0.2,) * channels
    tf = build_train_transform(aug, size, mean, std, channels, ds.channels)
    batch_tf = batched_train_transform(aug, size, mean, std, channels, ds.channels)
    pre = Preprocess(input_size=size, mean=mean, std=std, crop_ratio=1.0, interpolation=aug.interpolation,
                     channels=channels)
    return DataBundle(SeededTransform(ds, tf, batch_tf), None, list(ds.classes), pre, 0)


def data_cfg(size: int, batch: int, on_device: bool = True) -> DataConfig:
    return DataConfig(dataset="synthetic", image_size=size, batch_size=batch, workers=0, on_device=on_device)


def grey(n: int = 48, size: int = 20, seed: int = 3) -> SyntheticImages:
    return SyntheticImages(n, 4, image_size=size, channels=1, seed=seed)


def take(feed) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in feed]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b) and len(a) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---- the DataLoader feed ---------------------------------------------------------------------------------------

def test_cpu_default_feed_is_todays_loader_bit_for_bit():
    aug = small_aug(crop_padding=2, hflip=0.5)
    bundle = bundle_of(grey(), 16, aug, 3)
    sampler = ShardedSampler(len(bundle.train), seed=5, drop_last_batch=8)
    feed = train_feed(bundle, sampler, data_cfg(16, 8, on_device=False), aug, "cpu")
    assert isinstance(feed, PrefetchFeed) and not feed.prefetch
    assert feed.loader.dataset is bundle.train  # no uint8 detour on the CPU
    got = take(feed)
    want = take(make_loader(bundle.train, sampler, 8, 0, CPU, True))
    assert_same_batches(got, want)
    assert got[0][0].dtype == torch.float32 and len(feed) == len(got) == 6


def test_uint8_crops_normalised_on_the_device_equal_shiftflip_bitwise():
    mean, std = (0.2860,) * 3, (0.3530,) * 3
    tf = ShiftFlip(16, padding=2, hflip=0.5, mean=mean, std=std, channels=3, src_channels=1, interpolation="bicubic")
    images, seeds = grey(12).images, list(range(100, 112))
    raw = tf.with_uint8_output()(images, seeds)
    assert raw.dtype == torch.uint8 and raw.shape == (12, 3, 16, 16)
    want = tf(images, seeds)
    assert want.dtype == torch.float32  # the copy changed, not the original
    assert torch.equal(Normalize(mean, std, CPU)(raw), want)


def test_prefetch_loop_over_uint8_batches_yields_the_float_pipelines_batches():
    aug = small_aug(crop_padding=3, hflip=0.5)
    bundle = bundle_of(grey(40), 16, aug, 1)
    sampler = ShardedSampler(len(bundle.train), seed=1, drop_last_batch=8)
    uint8_set = deferred_normalization(bundle.train)
    assert uint8_set is not bundle.train and uint8_set.batch_transform.emit_uint8
    assert not bundle.train.batch_transform.emit_uint8
    loader = make_loader(uint8_set, sampler, 8, 0, CPU, True)
    assert next(iter(loader))[0].dtype == torch.uint8
    feed = PrefetchFeed(loader, CPU, bundle.mean, bundle.std, prefetch=True)  # the CUDA loop, streams off
    want = take(make_loader(bundle.train, sampler, 8, 0, CPU, True))
    assert_same_batches(take(feed), want)
    # an iterator left early (max_steps) does not disturb the next one
    it = iter(feed)
    next(it)
    assert_same_batches(take(feed), want)
    # a uint8 batch without statistics is refused, not passed on unscaled
    with pytest.raises(UsageError, match="need the normalisation mean/std"):
        next(iter(PrefetchFeed(loader, CPU)))


# ---- the device-resident split: same bytes, same order ---------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resident_pad_shift_path_without_draws_equals_shiftflip_bitwise(interpolation):
    # padding 0 and no flip leave nothing random: the device path must be ShiftFlip's bytes (resize 20 -> 16 and
    # grey -> RGB included), in the sampler's order, with the same labels
    aug = small_aug(interpolation=interpolation)
    bundle = bundle_of(grey(), 16, aug, 3)
    sampler = ShardedSampler(len(bundle.train), seed=2, drop_last_batch=8)
    feed = resident_feed(bundle, sampler, data_cfg(16, 8), aug, "cpu")
    assert feed.images.shape == (48, 1, 16, 16)  # stored resized and grey: a third of RGB's bytes
    got = take(feed)
    assert_same_batches(got, take(make_loader(bundle.train, sampler, 8, 0, CPU, True)))
    assert all(x.is_contiguous() and x.shape == (8, 3, 16, 16) for x, _ in got)


def test_resident_feed_follows_the_sampler_shards_and_start():
    # image i is the constant i: with mean 0 and std 1/255 each output pixel reads back its sample's index
    n = 64
    ds = Tensors(torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 8, 8).clone())
    aug = small_aug()
    bundle = bundle_of(ds, 8, aug, 1, mean=(0.0,), std=(1 / 255,))

    def seen(rank: int, world: int, start: int = 0) -> list[int]:
        sampler = ShardedSampler(n, rank, world, seed=9, epoch=1, start=start, drop_last_batch=4)
        out = []
        for x, y in resident_feed(bundle, sampler, data_cfg(8, 4), aug, "cpu"):
            idx = x.round().long()
            assert (idx == idx[:, :1, :1, :1]).all()  # whole images, nothing mixed
            assert torch.equal(y, idx[:, 0, 0, 0] % 4)  # each label travels with its image
            out += idx[:, 0, 0, 0].tolist()
        return out

    rank0, rank1 = seen(0, 2), seen(1, 2)
    assert len(rank0) == len(rank1) == 32 and not set(rank0) & set(rank1) and set(rank0) | set(rank1) == set(range(n))
    sampler = ShardedSampler(n, 0, 2, seed=9, epoch=1, drop_last_batch=4)
    assert rank0 == [i for i, _ in sampler]  # the sampler's own order
    assert seen(0, 2, start=8) == rank0[8:]  # resume position


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rrc", [True, False])
def test_resident_batches_are_a_function_of_seed_epoch_and_position(device, rrc):
    aug = small_aug(random_resized_crop=rrc, crop_padding=0 if rrc else 3, hflip=0.5, crop_scale_min=0.2)
    bundle = bundle_of(grey(64, 24), 16, aug, 3)

    def run(epoch: int, start: int = 0, seed: int = 4):
        sampler = ShardedSampler(64, seed=seed, epoch=epoch, start=start, drop_last_batch=8)
        return take(resident_feed(bundle, sampler, data_cfg(16, 8), aug, device))

    full = run(1)
    assert len(full) == 8
    assert_same_batches(run(1), full)  # a fresh feed draws the same
    assert_same_batches(run(1, start=3 * 8), full[3:])  # a run resumed mid-epoch sees the same batches
    assert not torch.equal(run(2)[0][0], full[0][0])  # another epoch draws anew
    assert not torch.equal(run(1, seed=5)[0][0], full[0][0])  # and another run seed
    # the same feed object serves every epoch: it reads epoch/start when iterated, as the trainer sets them
    sampler = ShardedSampler(64, seed=4, epoch=1, drop_last_batch=8)
    feed = train_feed(bundle, sampler, data_cfg(16, 8), aug, device)  # the trainer's entry point
    assert isinstance(feed, DeviceResidentFeed)
    sampler.epoch, sampler.start = 1, 5 * 8
    assert_same_batches(take(feed), full[5:])
    assert len(feed) == 3


# ---- the device-resident split: the augmentation's distribution ------------------------------------------------

def test_pad_shift_offsets_cover_the_padding_and_flips_follow_hflip():
    size, pad, n = 6, 2, 1500
    src = torch.arange(1, size * size + 1, dtype=torch.uint8).reshape(1, 1, size, size)  # 0 only in the padding
    bundle = bundle_of(Tensors(src.expand(n, 1, size, size).clone()), size, small_aug(), 1, (0.0,), (1 / 255,))
    aug = small_aug(crop_padding=pad, hflip=0.3)
    sampler = ShardedSampler(n, seed=0, drop_last_batch=100)
    out = torch.cat([x for x, _ in resident_feed(bundle, sampler, data_cfg(size, 100), aug, "cpu")]).round()
    # every output must be one of the (2 pad + 1)^2 x 2 pad-crop-flips of the source, computed by hand
    padded = torch.nn.functional.pad(src[0], (pad,) * 4).float()
    cases = [(t, l, f) for t in range(2 * pad + 1) for l in range(2 * pad + 1) for f in (False, True)]
    refs = torch.stack([(lambda c: c.flip(-1) if f else c)(padded[:, t:t + size, l:l + size]) for t, l, f in cases])
    match = (out[:, None] == refs[None]).flatten(2).all(-1)  # (n, cases)
    assert (match.sum(1) == 1).all()  # each output is exactly one of them
    drawn = [cases[i] for i in match.float().argmax(1).tolist()]
    for k in (0, 1):  # top and left: every offset 0..2*pad, each about a fifth of the time
        counts = torch.bincount(torch.tensor([d[k] for d in drawn]), minlength=2 * pad + 1).float() / n
        assert len(counts) == 2 * pad + 1 and (counts - 0.2).abs().max() < 0.05
    assert abs(sum(d[2] for d in drawn) / n - 0.3) < 0.05


def test_random_resized_crop_boxes_lie_in_the_image_with_the_configured_area_and_ratio():
    g = torch.Generator().manual_seed(0)
    for h, w in [(28, 28), (20, 32)]:
        boxes = draw_boxes(4000, h, w, 0.25, g, CPU)
        x0, y0, bw, bh = boxes.unbind(1)
        area = bw * bh / (h * w)
        assert area.min() >= 0.25 - 1e-5 and area.max() <= 1 + 1e-5
        assert area.min() < 0.3 and area.max() > 0.8  # the range is used (20 x 32 fits at most 0.83 at ratio 4/3)
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + bw <= w + 1e-4).all() and (y0 + bh <= h + 1e-4).all()
        ratio = bw / bh
        assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
        # positions spread over the free room, as RandomResizedCrop's uniform offsets do
        room = (w - bw).clamp_min(1e-6)
        assert (x0 / room).mean().sub(0.5).abs() < 0.05
    # no draw fits a 4 x 40 strip at scale >= 0.99: torchvision's fallback, the whole height, ratio clamped, centered
    fallback = draw_boxes(5, 4, 40, 0.99, g, CPU)
    assert torch.allclose(fallback, torch.tensor([[(40 - 16 / 3) / 2, 0, 16 / 3, 4]]).expand(5, 4))


def test_crop_resize_samples_the_box_by_hand():
    x = torch.arange(8 * 16, dtype=torch.float32).reshape(1, 1, 8, 16)
    no, yes = torch.tensor([False]), torch.tensor([True])
    right_half = torch.tensor([[8.0, 0.0, 8.0, 8.0]])
    assert torch.allclose(crop_resize(x, right_half, no, 8, "bilinear"), x[..., 8:], atol=1e-4)
    assert torch.allclose(crop_resize(x, right_half, yes, 8, "bilinear"), x[..., 8:].flip(-1), atol=1e-4)
    # the whole 8 x 16 image squeezed to 8 x 8: each output pixel center falls between two columns
    whole = torch.tensor([[0.0, 0.0, 16.0, 8.0]])
    assert torch.allclose(crop_resize(x, whole, no, 8, "bilinear"), (x[..., 0::2] + x[..., 1::2]) / 2, atol=1e-4)


def test_resident_random_resized_crop_flips_at_the_hflip_rate_and_normalises():
    # scale_min 1 on a square image: no draw fits (only ratio exactly 1 would), so every crop is the whole image
    # and the output is the image or its mirror; left half 0, right half 255
    n, size = 1000, 8
    src = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    src[..., size // 2:] = 255
    aug = small_aug(random_resized_crop=True, crop_scale_min=1.0, hflip=0.25)
    bundle = bundle_of(Tensors(src.expand(n, 1, size, size).clone()), size, aug, 3, (0.5,) * 3, (0.5,) * 3)
    sampler = ShardedSampler(n, seed=1, drop_last_batch=100)
    out = torch.cat([x for x, _ in resident_feed(bundle, sampler, data_cfg(size, 100), aug, "cpu")])
    assert out.shape == (n, 3, size, size) and out.is_contiguous()
    plain = (src.float() / 255 - 0.5) / 0.5
    flipped = out[:, :, :, 0].mean((1, 2)) > 0
    assert torch.allclose(out[~flipped], plain.expand(int((~flipped).sum()), 3, -1, -1), atol=1e-5)
    assert torch.allclose(out[flipped], plain.flip(-1).expand(int(flipped.sum()), 3, -1, -1), atol=1e-5)
    assert abs(flipped.float().mean().item() - 0.25) < 0.05


def test_resident_random_resized_crop_of_a_constant_image_is_that_constant():
    # whatever the box, a crop of a constant image is constant: scaling, bicubic clamping and grey -> RGB hold
    ds = Tensors(torch.full((16, 1, 12, 10), 200, dtype=torch.uint8))
    aug = small_aug(random_resized_crop=True, crop_scale_min=0.08, hflip=0.5, interpolation="bicubic")
    bundle = bundle_of(ds, 16, aug, 3, (0.1, 0.2, 0.3), (0.5, 0.4, 0.3))
    x, _ = next(iter(resident_feed(bundle, ShardedSampler(16, drop_last_batch=16), data_cfg(16, 16), aug, "cpu")))
    want = (200 / 255 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.4, 0.3])
    assert x.shape == (16, 3, 16, 16) and torch.allclose(x, want.view(1, 3, 1, 1).expand_as(x), atol=1e-5)


# ---- random erasing in batch form (the device feed and ShiftFlip) ------------------------------------------------

def erased_boxes(mask: torch.Tensor) -> torch.Tensor:
    """(top, left, h, w) of each (H, W) mask's True region, checking that it is one filled rectangle."""
    rows, cols = mask.any(2), mask.any(1)
    h, w = rows.sum(1), cols.sum(1)
    top, left = rows.float().argmax(1), cols.float().argmax(1)
    assert torch.equal(mask.sum((1, 2)), h * w)  # the region fills its bounding box: a rectangle
    return torch.stack([top, left, h, w], 1)


def test_erasing_boxes_follow_torchvision_random_erasing():
    """draw_erasing against torchvision's RandomErasing itself: the erase rate, and the distribution of the boxes'
    height, width and place (two-sample Kolmogorov-Smirnov distance), on a square and an oblong image."""
    from torchvision.transforms import v2

    from convnext.data.transforms import draw_erasing

    def ks(a: torch.Tensor, b: torch.Tensor) -> float:
        grid = torch.cat([a, b]).unique().double()
        cdf = lambda x: (x.double()[:, None] <= grid).double().mean(0)  # noqa: E731
        return (cdf(a) - cdf(b)).abs().max().item()

    n = 3000
    torch.manual_seed(0)
    for height, width, p in [(28, 28, 0.6), (20, 32, 0.6)]:
        ref_tf = v2.RandomErasing(p=p, value=1.0)
        ref_masks = torch.stack([ref_tf(torch.zeros(1, height, width))[0] > 0 for _ in range(n)])
        ours = draw_erasing(n, height, width, p, torch.Generator().manual_seed(1))
        top, left, h, w = ours.unbind(1)
        assert ours.dtype == torch.long and (h >= 0).all() and ((h == 0) == (w == 0)).all()
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
        assert ((h < height) & (w < width)).all()  # strictly inside, as torchvision requires
        hit, ref_hit = h > 0, ref_masks.flatten(1).any(1)
        assert abs(hit.float().mean() - ref_hit.float().mean()) < 0.04
        ref = erased_boxes(ref_masks[ref_hit])
        for k, name in enumerate(("top", "left", "h", "w")):
            assert ks(ours[hit][:, k], ref[:, k]) < 0.06, name
        assert ks(h[hit] * w[hit], ref[:, 2] * ref[:, 3]) < 0.06  # the area, the rule's first draw
    # a box strictly inside a 1 x 1 image is empty: nothing is ever erased there
    assert (draw_erasing(50, 1, 1, 1.0)[:, 2:] == 0).all()
    assert (draw_erasing(500, 16, 16, 0.0)[:, 2] == 0).all()


@pytest.mark.parametrize("rrc", [False, True])
def test_resident_erasing_fills_one_box_with_unit_noise_and_keeps_the_crops(rrc):
    n, size = 400, 16
    aug = small_aug(random_resized_crop=rrc, crop_padding=0 if rrc else 2, hflip=0.5)
    ds = Tensors(torch.full((n, 1, size, size), 100, dtype=torch.uint8))
    bundle = bundle_of(ds, size, aug, 3)

    def batches(erasing: float):
        a = AugmentConfig(**{**aug.__dict__, "random_erasing": erasing})
        return torch.cat([x for x, _ in resident_feed(bundle, ShardedSampler(n, seed=2, drop_last_batch=100),
                                                      data_cfg(size, 100), a, "cpu")])

    plain, erased = batches(0.0), batches(0.5)
    changed = (erased != plain).any(1)  # (n, H, W): noise never equals the constant's normalised value
    kept = ~changed
    assert torch.equal(erased.permute(0, 2, 3, 1)[kept], plain.permute(0, 2, 3, 1)[kept])  # the crops are unchanged
    hit = changed.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.5) < 0.07
    boxes = erased_boxes(changed[hit])
    area = (boxes[:, 2] * boxes[:, 3]).float() / size**2
    assert area.min() >= 0.02 - 1 / size and area.max() <= 0.33 + 2 / size
    noise = erased.permute(0, 2, 3, 1)[changed]  # every channel of an erased pixel is noise
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    assert torch.equal(batches(0.5), erased)  # still a function of the seeds


def test_shiftflip_erasing_keeps_each_seeds_shift_and_flip_and_depends_on_its_own_seed():
    n, size = 300, 12
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seeds = list(range(1000, 1000 + n))
    args = dict(mean=(0.5,), std=(0.25,), channels=1, src_channels=1, interpolation="bilinear")
    plain = ShiftFlip(size, padding=2, hflip=0.5, **args)
    erasing = ShiftFlip(size, padding=2, hflip=0.5, erasing=0.4, **args)
    a, b = plain(images, seeds), erasing(images, seeds)
    changed = (a != b)[:, 0]
    hit = changed.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.4) < 0.07
    erased_boxes(changed[hit])  # one rectangle each (where noise happens to equal a pixel, a hole: never in float)
    assert erasing.draws(5) == plain.draws(5)
    assert torch.equal(erasing(images[7:], seeds[7:])[0], b[7])  # a sample's result depends only on its seed
    # the batched fetch goes through it, and the GPU feed's uint8 detour is refused (noise follows normalisation)
    aug = small_aug(crop_padding=2, hflip=0.5, random_erasing=0.4)
    tf = batched_train_transform(aug, size, (0.5,), (0.25,), 1, 1)
    assert isinstance(tf, ShiftFlip) and tf.erasing == 0.4
    dataset = SeededTransform(Tensors(images), build_train_transform(aug, size, (0.5,), (0.25,), 1, 1), tf)
    assert deferred_normalization(dataset) is dataset
    with pytest.raises(ValueError, match="erasing"):
        tf.with_uint8_output()


# ---- which datasets, which settings ----------------------------------------------------------------------------

def test_split_tensors_indexes_in_memory_views_and_decodes_same_size_folders():
    ds = grey(50, 8)
    view = limit_samples(split_holdout(ds, 10)[0], 25)  # a Subset of a Subset
    images, labels = split_tensors(view)
    assert torch.equal(images, torch.stack([view[i][0] for i in range(25)]))
    assert labels.tolist() == [view[i][1] for i in range(25)] and labels.dtype == torch.long
    pictures = Pictures([(6, 5)] * 3)
    images, labels = split_tensors(pictures)
    assert images.shape == (3, 3, 5, 6)
    assert torch.equal(images[1], torch.from_numpy(pictures.arrays[1]).permute(2, 0, 1))
    assert labels.tolist() == [0, 1, 0]


def one_line_error(match: str, fn, *args, **kw) -> str:
    with pytest.raises(UsageError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_on_device_refuses_what_it_cannot_do_in_one_line_naming_the_fix():
    msg = one_line_error("one size", split_tensors, Pictures([(6, 5), (6, 5), (7, 5)]))
    assert "set data.on_device false" in msg and "sample 2" in msg
    # the config says it before any work starts
    for overrides, fix in [
        (["data.on_device=true"], "set aug.randaugment false"),
        (["data.on_device=true", "aug.randaugment=false", "aug.interpolation=lanczos"],
         "set aug.interpolation to one of nearest, bilinear, bicubic"),
    ]:
        one_line_error(fix, load_config, None, overrides, preset_name="paper")
    assert load_config(None, ["data.on_device=true"], preset_name="small").data.on_device
    assert load_config(None, ["data.on_device=true", "aug.randaugment=false"], preset_name="paper").aug.random_erasing
    # lanczos is fine without random resized crop: that path resizes once, on the host, as ShiftFlip does
    load_config(None, ["data.on_device=true", "aug.interpolation=lanczos"], preset_name="small")
    # the library says it too, for callers that bypass the config
    bundle = bundle_of(grey(16, 8), 8, small_aug(), 1)
    one_line_error("RandAugment", resident_feed, bundle, ShardedSampler(16), data_cfg(8, 4), AugmentConfig(), "cpu")
    one_line_error("aug.interpolation", BatchAugment, 8, (0.5,), (0.5,), 1, random_resized_crop=True,
                   interpolation="lanczos")
    one_line_error("sampler yielding", iter, resident_feed(bundle, ShardedSampler(16, shuffle=False), data_cfg(8, 4),
                                                           small_aug(), "cpu"))


def test_on_device_is_off_by_default_and_old_runs_resume():
    assert TrainConfig().data.on_device is False
    cfg = TrainConfig().replace(["aug.randaugment=false", "aug.random_erasing=0"])
    saved = cfg.to_dict()
    del saved["data"]["on_device"]  # a run saved before the field existed
    assert resume_conflicts(saved, cfg) == []
    assert resume_conflicts(saved, cfg.replace(["data.on_device=true"])) == ["data.on_device None -> True"]
    del saved["data"]["holdout"]  # only absent fields at their default pass
    assert resume_conflicts(saved, cfg.replace(["data.holdout=5"])) == ["data.holdout None -> 5"]


def test_mixer_takes_the_resident_batches():
    aug = small_aug(random_resized_crop=True, hflip=0.5, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    bundle = bundle_of(grey(16, 12), 16, aug, 3)
    feed = resident_feed(bundle, ShardedSampler(16, drop_last_batch=8), data_cfg(16, 8), aug, "cpu")
    images, labels = next(iter(feed))
    mixed, targets = build_mixer(aug, 4)(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(1), torch.ones(8))


# ---- CUDA ------------------------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_prefetch_feed_yields_the_cpu_pipelines_tensors():
    aug = small_aug(crop_padding=2, hflip=0.5)
    bundle = bundle_of(grey(64), 16, aug, 3, (0.2860,) * 3, (0.3530,) * 3)
    sampler = ShardedSampler(64, seed=3, drop_last_batch=8)
    cuda = torch.device("cuda")
    for workers in (0, 2):
        feed = train_feed(bundle, sampler, DataConfig(image_size=16, batch_size=8, workers=workers), aug, cuda)
        assert feed.prefetch and feed.loader.dataset.batch_transform.emit_uint8  # uint8 crosses PCIe
        want = take(make_loader(bundle.train, sampler, 8, 0, CPU, True))
        got = list(feed)
        assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in got)
        assert len(got) == len(want)
        for (x, y), (wx, wy) in zip(got, want):
            torch.testing.assert_close(x.cpu(), wx, rtol=0, atol=1e-6)  # division is exact on both: bitwise in practice
            assert torch.equal(y.cpu(), wy)


@needs_cuda
def test_cuda_resident_feed_and_mixer_never_wait_for_the_gpu():
    aug = small_aug(random_resized_crop=True, hflip=0.5, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    bundle = bundle_of(grey(64, 20), 16, aug, 3)
    sampler = ShardedSampler(64, seed=3, drop_last_batch=8)
    feed = resident_feed(bundle, sampler, data_cfg(16, 8), aug, "cuda")
    mixer = build_mixer(aug, 4)
    batches = iter(feed)  # once per epoch: the sampler's order, pinned and copied over
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # from here on, any host synchronisation raises
    try:
        for images, labels in batches:
            images, targets = mixer(images, labels)
            images.contiguous(memory_format=torch.channels_last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.device.type == "cuda" and targets.shape == (8, 4)


def test_trainer_on_device_run_resumes_bitwise_and_learns(tmp_path):
    """The engine with data.on_device (random resized crop, flips, random erasing, Mixup/CutMix on the device):
    stopped mid-epoch and resumed, it ends bitwise where the uninterrupted run ends."""
    from convnext.train import train
    from train_helpers import run_dir, tiny_config, weights

    over = {"data.on_device": True, "aug.random_resized_crop": True, "aug.hflip": 0.5, "aug.mixup": 0.8,
            "aug.cutmix": 1.0, "aug.randaugment": False, "aug.random_erasing": 0.25, "opt.epochs": 2,
            "data.synthetic_samples": 32}
    whole = train(tiny_config(tmp_path / "whole", **over))
    train(tiny_config(tmp_path / "part", **over, **{"runtime.max_steps": 3}))
    resumed = train(tiny_config(tmp_path / "part", **over, **{"runtime.resume": "auto"}))
    assert resumed["steps"] == whole["steps"] == 8 and resumed["resumed_from"]
    a, b = weights(run_dir(tmp_path / "whole") / "last.safetensors"), weights(run_dir(tmp_path / "part") / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["history"][-1]["train_loss"] < whole["history"][0]["train_loss"]
