"""Shared by test_predict / test_export / test_info: a tiny TRAINED checkpoint and a folder of awkward images.

The checkpoint is trained once per test process (a few dozen steps of a plain torch loop on a
Fashion-MNIST subset) and cached, whichever test module asks first.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convnext
import convnext.data  # FASHION_MNIST_ROOT: the submodule is not imported by `import convnext`
from convnext.checkpoint import ModelInfo, Preprocess, save_model

FASHION = Path(convnext.data.FASHION_MNIST_ROOT)  # FASHION_MNIST_ROOT overrides the system copy
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIZE = 32
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (train split)
STEPS, BATCH = 40, 96
TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), in_chans=1, num_classes=10)


def read_idx(name: str) -> np.ndarray:
    data = gzip.open(FASHION / f"{name}.gz", "rb").read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion(split: str = "t10k", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if not (FASHION / f"{split}-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    x, y = read_idx(f"{split}-images-idx3-ubyte"), read_idx(f"{split}-labels-idx1-ubyte")
    return (x[:n], y[:n]) if n else (x, y)


def to_input(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised (N, 1, 32, 32): what the checkpoint's Preprocess asks for."""
    t = torch.from_numpy(x.copy()).float().div(255).unsqueeze(1)
    t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (t - MEAN) / STD


def trained_checkpoint(folder: Path) -> Path:
    x, y = fashion("train", 4096)
    torch.manual_seed(0)
    model = convnext.create_model("convnext_atto", **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
    inputs, labels = to_input(x), torch.from_numpy(y.astype(np.int64))
    model.train()
    for step in range(STEPS):
        idx = torch.randint(0, len(labels), (BATCH,))
        loss = F.cross_entropy(model(inputs[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    info = ModelInfo(
        model.cfg, name="convnext_atto", class_names=CLASSES,
        preprocess=Preprocess(input_size=SIZE, mean=(MEAN,), std=(STD,), crop_ratio=1.0, interpolation="bilinear",
                              channels=1),
        train={"steps": STEPS, "data": "fashion-mnist[:4096]", "final_loss": round(loss.item(), 4)},
    )
    path = folder / "model.safetensors"
    return save_model(model, path, info)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("trained-checkpoint"))


def write_awkward_images(root: Path) -> dict[str, Path]:
    """Real photos (scikit-image) in every format and mode predict must handle, plus broken files."""
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    astronaut, coffee, camera = data.astronaut(), data.coffee(), data.camera()
    files = {}

    def save(name, array_or_image, **kw):
        im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
        im.save(root / name, **kw)
        files[name] = root / name

    save("astronaut.png", astronaut)
    save("astronaut.jpg", astronaut, quality=95)
    save("astronaut.webp", astronaut, lossless=True)
    save("astronaut.bmp", astronaut)
    save("coffee.jpg", coffee, quality=95)
    # fully opaque alpha: must give exactly the RGB image's answer
    save("astronaut_rgba.png", np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)]))
    save("camera_gray.png", camera)
    save("camera_16bit.png", Image.fromarray(camera.astype(np.uint16) * 257))  # same picture, 16 bits
    # stored rotated 90 degrees (600 wide becomes 600 tall) with EXIF Orientation=6 ("rotate 90 CW to
    # display"): shown upright it is coffee.png
    exif = Image.Exif()
    exif[0x0112] = 6
    save("coffee_exif_rotated.png", Image.fromarray(coffee).transpose(Image.Transpose.ROTATE_90), exif=exif)
    save("coffee_exif_rotated.jpg", Image.fromarray(coffee).transpose(Image.Transpose.ROTATE_90), exif=exif,
         quality=95)
    save("coffee.png", coffee)
    jpeg = (root / "coffee.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated mid-scan
    (root / "notes.txt").write_text("not an image\n")
    files["corrupt.jpg"], files["notes.txt"] = root / "corrupt.jpg", root / "notes.txt"
    return files
