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
