import gzip
import struct
import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from PIL import Image

from convnext.data import (
    FASHION_MNIST_ROOT, BadImageWarning, BatchMixer, FashionMNIST, ImageFolder, SeededTransform,
    SyntheticImages, build_train_transform, check_same_classes, eval_transform, load_dataset, read_idx,
)
from convnext.data.transforms import RandAugmentMstd
from convnext.errors import UsageError
from convnext.preprocess import Preprocess
from convnext.train.config import AugmentConfig

pytestmark = pytest.mark.filterwarnings("ignore::convnext.data.folders.BadImageWarning")
HAVE_FMNIST = (FASHION_MNIST_ROOT and __import__("os").path.exists(f"{FASHION_MNIST_ROOT}/t10k-labels-idx1-ubyte.gz"))


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_hand_written_file(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx.gz" if gz else "x.idx")
    _write_idx(p, a, gz)
    assert np.array_equal(read_idx(p), a)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    a = np.zeros((10, 4), dtype=np.uint8)
    p = tmp_path / "t.idx"
    _write_idx(p, a, False)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(UsageError, match="truncated"):
        read_idx(p)
    q = tmp_path / "q.idx"
    q.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(UsageError, match="bad magic"):
        read_idx(q)


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_fashion_mnist_real_files():
    val = FashionMNIST(split="val")
    assert len(val) == 10_000 and val.images.shape == (10_000, 1, 28, 28) and val.images.dtype == torch.uint8
    # the test set is balanced: 1,000 images per class (Fashion-MNIST README)
    assert torch.equal(torch.bincount(val.targets), torch.full((10,), 1000))
    assert val.classes[0] == "T-shirt/top" and val.classes[9] == "Ankle boot"
    img, label = val[0]
    assert img.shape == (1, 28, 28) and label == 9  # first test image is an ankle boot


def test_fashion_mnist_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\]"):
        FashionMNIST(tmp_path)


def _png(path, mode="RGB", size=(12, 10), color=0):
    Image.new(mode, size, color).save(path)


def _bad_folder(root):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        _png(root / cls / "ok1.png")
        _png(root / cls / "ok2.png", mode="P")  # palette: converted, not skipped
    Image.new("CMYK", (9, 9)).save(root / "cat" / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "dog" / "deep.png")  # 16-bit
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "fake.jpg").write_text("<html>not a jpeg</html>")
    full = (root / "cat" / "ok1.png").read_bytes()
    Image.new("RGB", (64, 64), 128).save(root / "dog" / "trunc.png")
    data = (root / "dog" / "trunc.png").read_bytes()
    (root / "dog" / "trunc.png").write_bytes(data[: len(data) // 2])
    return full


def test_image_folder_skips_and_counts_bad_files(tmp_path):
    _bad_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(tmp_path, channels=3)
    bad = {p.split("/")[-1]: r for p, r in ((b.path, b.reason) for b in ds.bad_files)}
    assert set(bad) == {"empty.png", "notes.txt", "fake.jpg", "trunc.png"}
    assert "zero-byte" in bad["empty.png"] and "not an image" in bad["notes.txt"]
    assert sum(issubclass(w.category, BadImageWarning) for w in caught) == 4
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    for i in range(len(ds)):  # wrong-mode images come out in the requested mode
        img, label = ds[i]
        assert img.mode == "RGB" and label in (0, 1)
    gray = ImageFolder(tmp_path, channels=1)
    assert all(gray[i][0].mode == "L" for i in range(len(gray)))
    deep = [i for i, (p, _) in enumerate(gray.samples) if p.endswith("deep.png")][0]
    assert np.asarray(gray[deep][0]).max() == round(40000 / 257)  # 0..65535 maps evenly onto 0..255, not clipped to 255


def test_image_folder_strict_fails_fast(tmp_path):
    _bad_folder(tmp_path)
    with pytest.raises(UsageError, match="strict"):
        ImageFolder(tmp_path, strict=True)


def test_image_folder_replaces_a_file_broken_after_the_scan(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png", color=(i * 50, 0, 0))
    ds = ImageFolder(tmp_path)
    (tmp_path / "a" / "1.png").write_bytes(b"garbage")
    with pytest.warns(BadImageWarning, match="1.png"):
        img, _ = ds[1]
    assert img.getpixel((0, 0))[0] == 100  # the next readable sample


def test_empty_class_empty_dataset_and_class_mismatch_are_clear(tmp_path):
    (tmp_path / "a").mkdir()
    _png(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(UsageError, match=r"b: class folder holds no usable images"):
        ImageFolder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        ImageFolder(tmp_path / "empty")
    only_bad = tmp_path / "bad"
    (only_bad / "c").mkdir(parents=True)
    (only_bad / "c" / "z.png").write_bytes(b"")
    with pytest.raises(UsageError, match="no usable images"):
        ImageFolder(only_bad)
    train, val = SyntheticImages(8, 3), SyntheticImages(8, 3)
    val.classes = ["class_0", "class_1", "other"]
    with pytest.raises(UsageError, match=r"only in train: \['class_2'\], only in val: \['other'\]"):
        check_same_classes(train, val)
    with pytest.raises(FileNotFoundError, match="train/CLASS"):
        load_dataset("folder", "train", root=tmp_path / "empty")


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_soft_targets_sum_to_one(mixup, cutmix):
    torch.manual_seed(0)
    mixer = BatchMixer(num_classes=5, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1)
    images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for _ in range(5):
        out, targets = mixer(images.clone(), labels)
        assert out.shape == images.shape and targets.shape == (8, 5)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        assert (targets >= 0.1 / 5 - 1e-7).all()  # smoothing floor
        # each row mixes (at most) its own label and its partner's (the batch rolled by one)
        partner = labels.roll(1)
        for t, a, b in zip(targets, labels, partner):
            others = [c for c in range(5) if c not in (int(a), int(b))]
            torch.testing.assert_close(t[others], torch.full((len(others),), 0.02))


def test_label_smoothing_alone_is_exact():
    mixer = BatchMixer(num_classes=4, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1)
    _, t = mixer(torch.zeros(2, 3, 4, 4), torch.tensor([0, 3]))
    torch.testing.assert_close(t, torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.025, 0.925]]))


def test_train_and_eval_pipelines_shapes_and_channels():
    aug = AugmentConfig()
    tf = build_train_transform(aug, 32, (0.5,) * 3, (0.5,) * 3, channels=3, src_channels=1)
    x = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    y = tf(x)
    assert y.shape == (3, 32, 32) and y.dtype == torch.float32
    ev = eval_transform(Preprocess(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_ratio=1.0,
                                   interpolation="bilinear", channels=3), src_channels=1)
    z = ev(x)
    assert torch.equal(z[0], z[1]) and torch.equal(z[1], z[2])  # grayscale repeated
    # eval resize is size / crop_ratio: 224 / 0.875 = 256, then center crop 224
    ev224 = eval_transform(Preprocess(input_size=224, mean=(0.5,), std=(0.5,), crop_ratio=0.875,
                                      interpolation="bicubic", channels=1), src_channels=1)
    resize, crop = (next(t for t in ev224.transforms if isinstance(t, kind)) for kind in (v2.Resize, v2.CenterCrop))
    assert resize.size == [256] and crop.size == (224, 224)
    assert ev224(torch.zeros(1, 300, 400, dtype=torch.uint8)).shape == (1, 224, 224)


def test_seeded_transform_depends_only_on_the_seed():
    ds = SyntheticImages(4, 2, image_size=32)
    tf = build_train_transform(AugmentConfig(), 32, (0.5,) * 3, (0.5,) * 3, channels=3)
    wrapped = SeededTransform(ds, tf)
    a, _ = wrapped[(1, 1234)]
    torch.manual_seed(99)
    torch.rand(100)  # disturb the global RNG: must not matter
    b, _ = wrapped[(1, 1234)]
    c, _ = wrapped[(1, 1235)]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_randaugment_magnitude_std_varies_magnitude():
    ra = RandAugmentMstd(num_ops=1, magnitude=9, magnitude_std=0.5)
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        ra(torch.zeros(3, 8, 8, dtype=torch.uint8))
        seen.add(ra.magnitude)
    assert 9 in seen and len(seen) >= 2 and all(7 <= m <= 11 for m in seen)
    fixed = RandAugmentMstd(num_ops=1, magnitude=9, magnitude_std=0.0)
    fixed(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert fixed.magnitude == 9


def test_synthetic_is_reproducible_and_shares_patterns():
    a, b = SyntheticImages(20, 4, 16, seed=0), SyntheticImages(20, 4, 16, seed=0)
    assert torch.equal(a.images, b.images)
    val = SyntheticImages(20, 4, 16, seed=1)
    assert not torch.equal(a.images, val.images)
    # same class pattern: class means are close between train and val, far between classes
    ma = torch.stack([a.images[a.targets == c].float().mean(0) for c in range(4)])
    mv = torch.stack([val.images[val.targets == c].float().mean(0) for c in range(4)])
    assert (ma - mv).abs().mean() < (ma[0] - ma[1]).abs().mean()


# ---- small-image pipeline: held-out split, batched shift/flip, batched eval ---------------------------

def _small_aug(**kw):
    return AugmentConfig(random_resized_crop=False, randaugment=False, random_erasing=0.0, **kw)


def test_shift_flip_matches_hand_computed_pad_crop_and_flip():
    from convnext.data.transforms import ShiftFlip

    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4) * 3
    tf = ShiftFlip(4, padding=1, hflip=0.5, mean=(0.0,), std=(1 / 255,), channels=1, src_channels=1,
                   interpolation="bilinear")
    seeds = [11, 12]
    out = tf(images, seeds)
    for i, seed in enumerate(seeds):
        top, left, flip = tf.draws(seed)
        ref = torch.nn.functional.pad(images[i], (1, 1, 1, 1))[:, top:top + 4, left:left + 4]
        ref = ref.flip(-1) if flip else ref
        assert torch.allclose(out[i], ref.float(), atol=1e-4)  # std 1/255 undoes the [0, 1] scaling
    # each sample's draw depends on its own seed only, not on the batch it sits in
    assert torch.equal(tf(images[1:], seeds[1:])[0], out[1])
    # across many seeds every offset and both flips occur
    draws = {tf.draws(s) for s in range(200)}
    assert {d[0] for d in draws} == {0, 1, 2} and {d[2] for d in draws} == {True, False}


def test_shift_flip_without_shifts_or_flips_skips_the_draws_and_returns_the_gathers_bytes_and_layout():
    from convnext.data.transforms import ShiftFlip

    images = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tf = ShiftFlip(8, padding=0, hflip=0.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), channels=3, src_channels=3,
                   interpolation="bilinear")
    fast = tf(images, list(range(6)))
    gathered = tf(images, [None] * 6)  # unseeded samples take the drawing path (it uses the global RNG)
    assert torch.equal(fast, gathered) and fast.stride() == gathered.stride()
    # the reference by hand: 10 -> 8 px (bilinear, antialiased; the centre crop of 8 then takes it all), normalised
    from torchvision.transforms.v2 import functional as F

    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    expected = (F.resize(images, [8, 8], antialias=True).float() / 255 - mean) / std
    torch.testing.assert_close(fast, expected, atol=1e-6, rtol=0)


def test_batched_train_transform_is_used_only_when_it_covers_the_augmentation():
    from convnext.data.transforms import ShiftFlip, batched_train_transform

    args = (28, (0.5,), (0.5,), 1, 1)
    assert isinstance(batched_train_transform(_small_aug(crop_padding=2), *args), ShiftFlip)
    assert batched_train_transform(AugmentConfig(), *args) is None  # RandomResizedCrop, RandAugment, erasing
    assert batched_train_transform(AugmentConfig(random_resized_crop=False, random_erasing=0.0), *args) is None


def test_batched_fetch_equals_per_sample_pipeline():
    ds = SyntheticImages(24, 3, image_size=20, channels=1, seed=3)
    pre = Preprocess(input_size=16, mean=(0.4,) * 3, std=(0.2,) * 3, crop_ratio=0.8, channels=3)
    val = SeededTransform(ds, eval_transform(pre, src_channels=1))
    batched = val.__getitems__(list(range(24)))
    for i, (image, label) in enumerate(batched):
        ref_image, ref_label = val[i]
        assert torch.equal(image, ref_image) and label == ref_label
    # no pad and no flip: the batched train pipeline is the eval pipeline (without the crop margin)
    from convnext.data.transforms import batched_train_transform

    aug = _small_aug(hflip=0.0, crop_ratio=1.0)
    train_tf = batched_train_transform(aug, 16, pre.mean, pre.std, 3, 1)
    train = SeededTransform(ds, build_train_transform(aug, 16, pre.mean, pre.std, 3, 1), train_tf)
    plain = SeededTransform(ds, eval_transform(Preprocess(input_size=16, mean=pre.mean, std=pre.std, crop_ratio=1.0,
                                                          channels=3), src_channels=1))
    for (image, _), i in zip(train.__getitems__([(i, i) for i in range(8)]), range(8)):
        assert torch.allclose(image, plain[i][0], atol=1e-6)


def test_a_data_loader_over_batched_fetches_is_worker_independent():
    ds = SyntheticImages(40, 4, image_size=12, channels=1, seed=1)
    aug = _small_aug(crop_padding=2)
    from convnext.data.transforms import batched_train_transform

    st = SeededTransform(ds, build_train_transform(aug, 12, (0.5,), (0.5,), 1, 1),
                         batched_train_transform(aug, 12, (0.5,), (0.5,), 1, 1))
    keys = [(i, 1000 + i) for i in range(40)]

    def run(workers):
        loader = torch.utils.data.DataLoader(st, batch_size=8, sampler=keys, num_workers=workers)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(run(0), run(2))


def test_holdout_split_is_fixed_disjoint_and_validated():
    from convnext.data.datasets import split_holdout

    ds = SyntheticImages(50, 5, image_size=8, channels=1)
    rest, held = split_holdout(ds, 10)
    assert len(rest) == 40 and len(held) == 10
    assert not set(rest.indices) & set(held.indices) and set(rest.indices) | set(held.indices) == set(range(50))
    assert split_holdout(ds, 10)[1].indices == held.indices  # the same images every time
    assert held.classes == ds.classes and held.channels == 1
    for n in (50, 60):
        with pytest.raises(UsageError, match="must leave training images"):
            split_holdout(ds, n)
