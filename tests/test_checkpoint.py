import torch
import pytest

import convnext
from convnext.checkpoint import ModelInfo, Preprocess, load_model, read_info, save_model
from convnext.errors import CheckpointError


def test_save_load_round_trip_exact(tmp_path):
    model = convnext.create_model("convnext_atto", num_classes=4, in_chans=1).eval()
    info = ModelInfo(model.cfg, name="convnext_atto", class_names=list("abcd"),
                     preprocess=Preprocess(input_size=32, mean=(0.5,), std=(0.25,), channels=1), train={"epoch": 3})
    path = save_model(model, tmp_path / "m.safetensors", info)
    loaded, info2 = load_model(path)
    assert info2.class_names == list("abcd") and info2.preprocess == info.preprocess and info2.train == {"epoch": 3}
    assert info2.config == model.cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    # a directory holding model.safetensors is a checkpoint too
    (tmp_path / "run").mkdir()
    save_model(model, tmp_path / "run" / "model.safetensors", info)
    assert read_info(tmp_path / "run").name == "convnext_atto"
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_unreadable_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)
