"""Training's validation, `convnext eval` and `convnext predict` feed the model identical tensors.

All three must apply the checkpoint's one eval pipeline (resize to size / crop_ratio, center crop, normalise);
a rounding or resampling difference between them would make the accuracy a run reports differ from what
eval and predict see. Each command runs its real code path here; a forward pre-hook records what reaches
the model in eval mode.
"""

import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.models import ConvNeXt
from convnext.train import train
from train_helpers import NO_AUG, run_dir, tiny_config

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def model_inputs():
    """Inputs of every ConvNeXt forward in eval mode (validation and inference), in call order."""
    seen: list[torch.Tensor] = []

    def record(module, args):
        if isinstance(module, ConvNeXt) and not module.training:
            seen.append(args[0].detach().cpu().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield seen
    handle.remove()


@pytest.mark.parametrize("photo", ["chelsea", "camera"])  # an RGB photo and a grayscale one
@pytest.mark.parametrize("size", [160, 224])
def test_train_validation_eval_and_predict_see_identical_tensors(tmp_path, model_inputs, capsys, photo, size):
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "cat").mkdir(parents=True)
        Image.fromarray(getattr(skimage_data, photo)()).save(root / split / "cat" / "photo.png")
    png = root / "val" / "cat" / "photo.png"
    cfg = tiny_config(tmp_path / "out", **{
        **NO_AUG, "data.dataset": "folder", "data.root": str(root), "data.image_size": size, "data.batch_size": 1,
        "aug.crop_ratio": 0.875, "aug.interpolation": "bicubic", "opt.epochs": 1})

    train(cfg)
    assert len(model_inputs) == 1  # the one validation batch (training steps run in train mode)
    ckpt = run_dir(tmp_path / "out") / "best.safetensors"
    assert main(["eval", str(ckpt), "--data-root", str(root), "--device", "cpu", "--workers", "0"]) == 0
    assert main(["predict", str(ckpt), str(png), "--device", "cpu"]) == 0
    capsys.readouterr()

    validation, evaluation, prediction = model_inputs
    assert validation.shape == (1, 3, size, size)
    assert torch.equal(validation, evaluation)
    assert torch.equal(validation, prediction)
