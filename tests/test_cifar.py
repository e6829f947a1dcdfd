"""CIFAR-10 / CIFAR-100 from the files their authors distribute (data/cifar.py), on miniatures written here in both
formats: the binary version's records, and the Python version's pickles, checked against torchvision's reader."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from convnext.checkpoint import read_info
from convnext.data import load_dataset
from convnext.data.cifar import CIFAR, read_pickle
from convnext.errors import UsageError
from train_helpers import run_cli

NAMES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images as (n, 3072) rows, each the red plane, then green, then blue (the files' order); fine labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_binary10(root: Path, sizes=(3, 2, 4, 1, 2), test: int = 3) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(NAMES10) + "\n\n\n")  # the real file ends in blank lines
    for i, n in enumerate((*sizes, test)):
        rows, labels = _images(n, seed=i)
        name = f"data_batch_{i + 1}.bin" if i < len(sizes) else "test_batch.bin"
        np.concatenate([labels[:, None], rows], axis=1).tofile(folder / name)
    return folder


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's ``str`` (the SHORT_BINSTRING / BINSTRING opcodes), as the real files were written:
    read back with encoding="bytes" they are bytes, with encoding="latin1" (torchvision's) text."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(b"U" + bytes([n]) + obj if n < 256 else b"T" + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def _dumps(obj, protocol: int) -> bytes:
    if protocol != "python2":
        return pickle.dumps(obj, protocol=protocol)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_python10(root: Path, protocol, sizes=(3, 2, 4, 1, 2), test: int = 3) -> Path:
    """The same images as _write_binary10, as the Python version stores them (its keys Python 2 strings)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    meta = {b"label_names": [n.encode() for n in NAMES10], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_dumps(meta, protocol))
    for i, n in enumerate((*sizes, test)):
        rows, labels = _images(n, seed=i)
        name = f"data_batch_{i + 1}" if i < len(sizes) else "test_batch"
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": rows,
                 b"filenames": [f"{j}.png".encode() for j in range(n)]}
        (folder / name).write_bytes(_dumps(batch, protocol))
    return folder


def test_binary_records_become_chw_images_with_their_labels_in_file_order(tmp_path):
    _write_binary10(tmp_path)
    train, val = CIFAR("cifar10", tmp_path, "train"), CIFAR("cifar10", tmp_path / "cifar-10-batches-bin", "val")
    assert train.classes == NAMES10 and train.channels == 3 and len(train) == 12 and len(val) == 3
    rows = np.concatenate([_images(n, seed=i)[0] for i, n in enumerate((3, 2, 4, 1, 2))])
    labels = np.concatenate([_images(n, seed=i)[1] for i, n in enumerate((3, 2, 4, 1, 2))])
    image, label = train[5]  # the first image of data_batch_3
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == labels[5]
    # by hand: pixel (row 7, column 30) of the green plane is byte 1024 + 7 * 32 + 30 of the image's row
    assert image[1, 7, 30].item() == rows[5, 1024 + 7 * 32 + 30]
    assert torch.equal(train.targets, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(val.images.reshape(3, -1), torch.from_numpy(_images(3, seed=5)[0]))


def test_cifar100_binary_trains_on_the_fine_label_not_the_coarse_one(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    names = [f"fine{i}" for i in range(100)]
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    for name, n in (("train.bin", 5), ("test.bin", 2)):
        rows, _ = _images(n, seed=n)
        coarse, fine = np.arange(n, dtype=np.uint8) % 20, (np.arange(n, dtype=np.uint8) * 17 + 3) % 100
        np.concatenate([coarse[:, None], fine[:, None], rows], axis=1).tofile(folder / name)
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.classes == names and ds.targets.tolist() == [3, 20, 37, 54, 71]
    assert torch.equal(ds.images.reshape(5, -1), torch.from_numpy(_images(5, seed=5)[0]))


@pytest.mark.parametrize("protocol", ["python2", 2, 4])  # as the real files were written; re-saved by Python 3
def test_python_version_gives_the_binary_versions_images(tmp_path, protocol):
    _write_binary10(tmp_path / "bin")
    _write_python10(tmp_path / "py", protocol)
    for split in ("train", "val"):
        a, b = CIFAR("cifar10", tmp_path / "bin", split), CIFAR("cifar10", tmp_path / "py", split)
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and a.classes == b.classes


def test_python_version_reads_as_torchvisions_reader_reads_it(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    _write_python10(tmp_path, "python2")
    # its checksums are the real files', so they are skipped for the miniature
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    for split in ("train", "val"):
        ours = CIFAR("cifar10", tmp_path, split)
        ref = torchvision.datasets.CIFAR10(str(tmp_path), train=split == "train", download=False)
        assert torch.equal(ours.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))  # it keeps (N, H, W, C)
        assert ours.targets.tolist() == ref.targets and ours.classes == ref.classes


def test_a_pickle_that_names_a_function_is_refused_before_it_runs(tmp_path):
    folder = _write_python10(tmp_path, "python2")
    sentinel = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(sentinel),))

    (folder / "data_batch_2").write_bytes(_dumps({b"data": Payload(), b"labels": []}, "python2"))
    with pytest.raises(UsageError, match=r"data_batch_2: not a CIFAR batch .*asks to run posix\.mkdir"):
        CIFAR("cifar10", tmp_path, "train")
    assert not sentinel.exists()


def test_damaged_or_missing_files_are_named_with_the_fix(tmp_path):
    with pytest.raises(UsageError, match="cifar10 needs a data root: extract cifar-10-binary.tar.gz"):
        CIFAR("cifar10", None)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-bin or cifar-10-batches-py"):
        CIFAR("cifar10", tmp_path)
    folder = _write_binary10(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-binary or cifar-100-python"):
        CIFAR("cifar100", tmp_path)  # CIFAR-10's files are not CIFAR-100's
    data = (folder / "data_batch_4.bin").read_bytes()
    (folder / "data_batch_4.bin").write_bytes(data[:-10])
    with pytest.raises(UsageError, match="data_batch_4.bin: 3063 bytes, not a whole number of 3073-byte"):
        CIFAR("cifar10", tmp_path)
    (folder / "data_batch_4.bin").write_bytes(data)
    (folder / "batches.meta.txt").write_text("\n".join(NAMES10[:3]))
    with pytest.raises(UsageError, match="batches.meta.txt names 3 classes"):
        CIFAR("cifar10", tmp_path)
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(UsageError, match="holds a list, not a dict"):
        read_pickle(tmp_path / "list")


def test_train_then_eval_by_the_datasets_name(tmp_path, capsys):
    _write_binary10(tmp_path / "data", sizes=(40, 40, 40, 40, 40), test=40)
    common = ["--data.workers", "0", "--runtime.progress", "false", "--runtime.plots", "false",
              "--runtime.tensorboard", "false", "--runtime.out", tmp_path / "runs", "--runtime.run_name", "c10"]
    rc, _, err = run_cli(["train", "--preset", "small", "--data.dataset", "cifar10", *common], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "needs a data root" in err
    assert not (tmp_path / "runs").exists()
    rc, out, err = run_cli(["train", "--preset", "small", "--data.dataset", "cifar10", "--data.root", tmp_path / "data",
                            "--opt.epochs", "1", *common], capsys)
    assert rc == 0, err
    run = tmp_path / "runs" / "c10"
    info = read_info(run / "best.safetensors")
    assert info.class_names == NAMES10
    assert info.preprocess.input_size == 32  # the small preset trains at CIFAR's own size, unless told otherwise
    rc, out, err = run_cli(["eval", run, "--data-root", tmp_path / "data", "--workers", "0", "--json"], capsys)
    assert rc == 0, err  # the checkpoint names cifar10, so its name alone picks the loader and the test split
    assert json.loads(out)["count"] == 40
