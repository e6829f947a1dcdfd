"""Weight interop: official / timm / torchvision / Hugging Face layouts <-> ours.

The references (timm, torchvision, transformers) are built with random weights, never downloaded.
Every parameter is randomised first: with layer scale at its 1e-6 init the blocks would be almost
no-ops and a wrongly mapped block weight would not show in the logits.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

import convnext
from convnext.checkpoint import load_model, save_model, ModelInfo
from convnext.cli import main as cli_main
from convnext.errors import CheckpointError
from convnext.models import get_config, list_models
from convnext.checkpoint import export_weights
from convnext.weights import LAYOUTS, detect_layout, load_weights, read_weights
from convnext.weights.layouts import from_ours, to_ours

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))
FAMILY = ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
          "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random and O(1)-scaled, so each one visibly affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif p.numel() == p.shape[0] or "layer_scale" in name or "gamma" in name:
                p.copy_(1.0 + 0.2 * noise.reshape(p.shape))  # norm weights, layer scale
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model.eval()


def uninitialised(make):
    """Build on the meta device and allocate without running the (slow) init: randomize() or a
    strict load then sets every value, and these models have no buffers to leave undefined."""
    with torch.device("meta"):
        model = make()
    assert not list(model.buffers())
    return model.to_empty(device="cpu")


def hf_tiny(num_labels: int = 1000):
    cfg = transformers.ConvNextConfig(num_labels=num_labels)  # defaults are ConvNeXt-T
    return transformers.ConvNextForImageClassification(cfg)


REFERENCES = {
    "timm_tiny": ("convnext_tiny", lambda: timm.create_model("convnext_tiny"), "timm"),
    # timm's atto uses 1x1-conv MLPs (conv_mlp=True): the other weight shape
    "timm_atto": ("convnext_atto", lambda: timm.create_model("convnext_atto"), "timm"),
    "torchvision_tiny": ("convnext_tiny", lambda: torchvision.models.convnext_tiny(), "torchvision"),
    "hf_tiny": ("convnext_tiny", hf_tiny, "hf"),
}


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("ref", list(REFERENCES))
def test_parity_both_directions(ref, tmp_path):
    name, make, layout = REFERENCES[ref]
    theirs = randomize(uninitialised(make), seed=1)
    # theirs -> ours through a file: safetensors for two of them, weights_only pickle for the others
    path = tmp_path / ("w.safetensors" if ref in ("timm_tiny", "hf_tiny") else "w.pth")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    else:
        torch.save(theirs.state_dict(), path)
    ours = uninitialised(lambda: convnext.create_model(name)).eval()
    report = load_weights(ours, path)  # strict: every value is overwritten
    assert report.layout == layout
    assert not (report.missing or report.unexpected or report.reinitialized or report.adapted)
    sizes = ((224, 224), (160, 96))
    for size in sizes:
        x = torch.randn(1, 3, *size)
        a, b = logits(ours, x), logits(theirs, x)
        assert b.abs().max() > 1.0  # the comparison is not between near-zero outputs
        assert (a - b).abs().max().item() <= 1e-4, (ref, size)

    # ours -> theirs: other random weights, exported in their layout, loaded strictly by their code
    randomize(ours, seed=2)
    path = export_weights(ours, tmp_path / f"{layout}.pth", layout=layout)
    loaded = torch.load(path, weights_only=True)
    theirs.load_state_dict(loaded["model"] if layout == "official" else loaded, strict=True)
    for size in sizes:
        x = torch.randn(1, 3, *size[::-1])
        a, b = logits(ours, x), logits(theirs, x)
        assert b.abs().max() > 1.0
        assert (a - b).abs().max().item() <= 1e-4, (ref, size)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_ours_to_layout_and_back_is_exact(layout, tmp_path):
    model = randomize(convnext.create_model("convnext_atto", num_classes=7, **SMALL))
    for suffix in (".safetensors", ".pth"):
        path = export_weights(model, tmp_path / f"m{suffix}", layout=layout)
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like any new file, not 0600
        weights = read_weights(path)
        assert weights.layout == layout and not weights.unmapped
        assert set(weights.state) == set(model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(weights.state[k], v), k
        again = convnext.create_model("convnext_atto", num_classes=7, **SMALL)
        load_weights(again, path)
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(logits(again.eval(), x), logits(model, x))


def test_whole_family_maps_onto_timm_torchvision_and_hf_keys_and_shapes():
    tv = {"convnext_tiny": torchvision.models.convnext_tiny, "convnext_small": torchvision.models.convnext_small,
          "convnext_base": torchvision.models.convnext_base, "convnext_large": torchvision.models.convnext_large}
    with torch.device("meta"):
        for name in FAMILY:
            ours = convnext.create_model(name).state_dict()
            cfg = get_config(name)
            hf_cfg = transformers.ConvNextConfig(depths=list(cfg.depths), hidden_sizes=list(cfg.dims), num_labels=1000)
            refs = {"timm": timm.create_model(name).state_dict(),
                    "hf": transformers.ConvNextForImageClassification(hf_cfg).state_dict()}
            if name in tv:
                refs["torchvision"] = tv[name]().state_dict()
            for layout, ref in refs.items():
                out = from_ours(ours, layout, conv_mlp=layout == "timm" and name in FAMILY[:4])
                assert set(out) == set(ref), (name, layout)
                assert all(out[k].shape == ref[k].shape for k in ref), (name, layout)
                assert detect_layout(ref) == layout
                back, unmapped = to_ours(ref, layout)
                assert not unmapped and {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in ours.items()}


def test_official_layout_matches_the_released_key_names_and_isotropic():
    sd = convnext.create_model("convnext_tiny", depths=(1, 1, 1, 1)).state_dict()
    official = from_ours(sd, "official")
    for key in ("downsample_layers.0.0.weight", "downsample_layers.0.1.bias", "downsample_layers.3.0.weight",
                "downsample_layers.3.1.weight", "stages.2.0.gamma", "stages.0.0.pwconv1.weight", "norm.weight",
                "head.bias"):
        assert key in official, key
    assert official["stages.0.0.pwconv1.weight"].shape == (384, 96)  # Linear in the official code
    # the isotropic models: stem (16x16 conv, no norm) and one run of blocks
    iso = randomize(convnext.create_model("convnext_isotropic_small", depths=(2,), dims=(32,)))
    off = from_ours(iso.state_dict(), "official")
    assert {"stem.weight", "blocks.1.dwconv.weight", "norm.bias", "head.weight"} <= set(off)
    assert not any(k.startswith("stages.") for k in off)
    again = convnext.create_model("convnext_isotropic_small", depths=(2,), dims=(32,))
    load_weights(again, {"model": off})
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(logits(again.eval(), x), logits(iso, x))


def _small(name):
    cfg = get_config(name)
    n = len(cfg.dims)
    kw = dict(depths=(1,) * n, dims=tuple(16 * 2 ** i for i in range(n)), num_classes=5)
    if cfg.stem_dim is not None:
        kw["stem_dim"] = 8
    return kw


def test_every_registered_model_round_trips_in_our_layout(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    for name in list_models():
        model = randomize(convnext.create_model(name, **_small(name)))
        path = export_weights(model, tmp_path / f"{name}.safetensors")
        loaded, info = load_model(path)  # carries its metadata: no name needed
        assert info.config == model.cfg, name
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
        assert torch.equal(logits(loaded, x), logits(model, x)), name
        # the same weights as a plain state dict also load, given the architecture
        plain = tmp_path / f"{name}.pth"
        torch.save(model.state_dict(), plain)
        again = convnext.create_model(name, pretrained=plain, **{k: v for k, v in _small(name).items() if k != "num_classes"})
        assert again.num_classes == 5  # taken from the file
        assert torch.equal(logits(again.eval(), x), logits(model, x)), name


def test_non_convnext_models_cannot_be_exported_to_foreign_layouts(tmp_path):
    model = convnext.create_model("resnet50", **_small("resnet50"))
    with pytest.raises(CheckpointError, match=r"cannot export in the timm layout: timm's ConvNeXt builds "
                                              r"ArchConfig.stem='patchify', this model has 'resnet'; .*layout 'ours'"):
        export_weights(model, tmp_path / "r.pth", layout="timm")
    assert not (tmp_path / "r.pth").exists()
    with pytest.raises(CheckpointError, match="unknown layout 'keras'"):
        export_weights(model, tmp_path / "r.pth", layout="keras")
    with pytest.raises(CheckpointError, match="unknown weights file type '.h5'"):
        export_weights(model, tmp_path / "r.h5", layout="ours")


def test_containers_and_prefixes_are_unwrapped():
    model = randomize(convnext.create_model("convnext_atto", **SMALL))
    official = from_ours(model.state_dict(), "official")
    timm_sd = from_ours(model.state_dict(), "timm")
    cases = {
        "official": {"model": official, "optimizer": {}, "epoch": 300},
        "timm": {"state_dict": {f"module.{k}": v for k, v in timm_sd.items()}, "epoch": 3},
        "ours": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
    }
    x = torch.randn(1, 3, 64, 64)
    for layout, obj in cases.items():
        fresh = convnext.create_model("convnext_atto", **SMALL)
        assert load_weights(fresh, obj).layout == layout
        assert torch.equal(logits(fresh.eval(), x), logits(model, x)), layout


def test_1000_class_checkpoint_into_n_classes_reinitialises_head_with_warning(tmp_path):
    src = randomize(convnext.create_model("convnext_atto", **SMALL))
    path = export_weights(src, tmp_path / "t.pth", layout="timm")
    torch.manual_seed(1)
    model = convnext.create_model("convnext_atto", num_classes=10, **SMALL)
    fresh_fc = model.head.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match="checkpoint has 1000 classes, the model 10: head.fc keeps its fresh"):
        report = load_weights(model, path)
    assert report.reinitialized == ["head.fc.weight", "head.fc.bias"]
    assert torch.equal(model.head.fc.weight, fresh_fc)
    for k, v in src.state_dict().items():
        if not k.startswith("head.fc"):
            assert torch.equal(model.state_dict()[k], v), k
    # the same through create_model(pretrained=...), where num_classes is an explicit choice
    with pytest.warns(UserWarning, match="head.fc keeps its fresh"):
        m2 = convnext.create_model("convnext_atto", pretrained=path, num_classes=3, **SMALL)
    assert m2.head.fc.out_features == 3
    # num_classes=0: a feature extractor, the classifier is dropped silently
    m3 = convnext.create_model("convnext_atto", pretrained=path, num_classes=0, **SMALL)
    assert logits(m3.eval(), torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_reset_classifier():
    model = randomize(convnext.create_model("convnext_atto", **SMALL))
    x = torch.randn(2, 3, 64, 64)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(4)
    assert model.num_classes == 4 and model.cfg.num_classes == 4 and model.head.fc.weight.shape == (4, 128)
    assert torch.equal(model.head.fc.bias, torch.zeros(4))
    assert model.head.fc.weight.std() < 0.05  # trunc-normal 0.02 init, not the randomised one
    out = logits(model, x)
    assert torch.allclose(out, model.head.fc(pooled), atol=1e-6)
    model.reset_classifier(0)
    assert torch.equal(logits(model, x), pooled)
    with pytest.raises(ValueError, match="num_classes=-1 must be >= 0"):
        model.reset_classifier(-1)


def test_in_chans_1_sums_rgb_kernels_and_other_counts_repeat(tmp_path):
    src = randomize(convnext.create_model("convnext_atto", **SMALL))
    path = export_weights(src, tmp_path / "m.safetensors", layout="hf")
    with pytest.warns(UserWarning, match="stem kernel adapted from 3 to 1 input channel"):
        grey = convnext.create_model("convnext_atto", pretrained=path, in_chans=1, **SMALL).eval()
    w = src.stem.conv.weight
    assert torch.allclose(grey.stem.conv.weight, w.sum(1, keepdim=True))
    # a grey image as one channel == the same image replicated to RGB in the original model
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(logits(grey, x), logits(src, x.expand(-1, 3, -1, -1)), atol=1e-4)
    with pytest.warns(UserWarning, match="from 3 to 5 input channel"):
        five = convnext.create_model("convnext_atto", pretrained=path, in_chans=5, **SMALL)
    expected = torch.cat([w, w[:, :2]], dim=1) * (3 / 5)
    assert torch.allclose(five.stem.conv.weight, expected)


def test_mismatches_name_parameter_shapes_layout_and_keys(tmp_path):
    atto = randomize(convnext.create_model("convnext_atto"))
    path = export_weights(atto, tmp_path / "atto.pth", layout="torchvision")
    femto = convnext.create_model("convnext_femto")
    with pytest.raises(CheckpointError) as e:
        load_weights(femto, path)
    msg = str(e.value)
    assert "parameter stem.conv.weight has shape (40, 3, 4, 4) in the checkpoint but (48, 3, 4, 4)" in msg
    assert "torchvision layout" in msg and "look like convnext_atto" in msg and str(path) in msg
    # same widths, different depth: missing keys listed
    with pytest.raises(CheckpointError, match=r"missing 9 \(first: stages\.2\.blocks\.6\.gamma") as e:
        load_weights(convnext.create_model("convnext_atto", depths=(2, 2, 7, 2)), path)
    assert "torchvision layout" in str(e.value)
    # strict=False loads what fits and reports the rest
    deeper = convnext.create_model("convnext_atto", depths=(2, 2, 7, 2))
    report = load_weights(deeper, path, strict=False)
    assert report.missing and all(k.startswith("stages.2.blocks.6.") for k in report.missing)
    assert torch.equal(deeper.stages[0].blocks[0].gamma, atto.stages[0].blocks[0].gamma)


def test_load_model_for_files_without_metadata(tmp_path):
    src = randomize(convnext.create_model("convnext_atto", num_classes=6))
    path = export_weights(src, tmp_path / "official.pth", layout="official")
    with pytest.raises(CheckpointError, match=r"architecture is unknown; pass --model NAME .*look like convnext_atto"):
        load_model(path)
    model, info = load_model(path, model_name="convnext_atto")
    assert model.num_classes == 6 and info.name == "convnext_atto" and not model.training
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(logits(model, x), logits(src, x))
    # overrides for fine-tuning, on a foreign file and on our own checkpoint alike
    with pytest.warns(UserWarning, match="head.fc keeps its fresh"):
        tuned, info = load_model(path, model_name="convnext_atto", num_classes=2)
    assert tuned.head.fc.out_features == 2 and info.config.num_classes == 2
    ours = save_model(src, tmp_path / "ours.safetensors", ModelInfo(src.cfg, name="convnext_atto",
                                                                   class_names=list("abcdef")))
    with pytest.warns(UserWarning, match="head.fc keeps its fresh"):
        tuned, info = load_model(ours, num_classes=2)
    assert info.config.num_classes == 2 and info.class_names is None
    backbone, _ = load_model(ours, features_only=True, out_indices=(1, 2))
    assert [f.shape[1] for f in backbone(x)] == [80, 160]


def test_convert_cli_chain_is_lossless(tmp_path, capsys):
    src = randomize(timm.create_model("convnext_atto", num_classes=10))  # 1x1-conv MLP, as timm builds atto
    start = tmp_path / "timm.bin"
    torch.save({"state_dict": src.state_dict(), "epoch": 5}, start)
    chain = [("official", "a.pth"), ("hf", "b.safetensors"), ("torchvision", "c.pt"), ("ours", "d.safetensors"),
             ("timm", "e.safetensors")]
    prev = start
    for layout, name in chain:
        dst = tmp_path / name
        assert cli_main(["convert", str(prev), str(dst), "--to", layout, "--model", "convnext_atto"]) == 0
        assert f"({layout} layout): read back, all tensors identical" in capsys.readouterr().out
        prev = dst
    # the ours-layout file is a full checkpoint: no --model needed to continue from it
    assert cli_main(["convert", str(tmp_path / "d.safetensors"), str(tmp_path / "f.pth"), "--to", "timm"]) == 0
    final = torch.load(tmp_path / "f.pth", weights_only=True)
    assert set(final) == set(src.state_dict())
    assert all(torch.equal(final[k], v) for k, v in src.state_dict().items())
    # no overwrite without --force; bad layout and missing --model are usage errors (exit 2)
    assert cli_main(["convert", str(start), str(tmp_path / "a.pth"), "--to", "hf", "--model", "convnext_atto"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli_main(["convert", str(start), str(tmp_path / "g.pth"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "pass --model NAME" in err and err.count("\n") == 1 and not (tmp_path / "g.pth").exists()
    with pytest.raises(SystemExit) as e:
        cli_main(["convert", str(start), str(tmp_path / "g.pth"), "--to", "keras"])
    assert e.value.code == 2


def test_convert_refuses_to_drop_weights(tmp_path, capsys):
    src = randomize(convnext.create_model("convnext_atto", **SMALL))
    path = export_weights(src, tmp_path / "t.pth", layout="timm")
    # converting with the wrong architecture is a clear error, never a partial file
    assert cli_main(["convert", str(path), str(tmp_path / "x.pth"), "--to", "hf", "--model", "convnext_atto"]) == 2
    assert "parameter stem.conv.weight has shape (16, 3, 4, 4)" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_transformers_convnextmodel_without_classifier():
    cfg = transformers.ConvNextConfig(depths=list(SMALL["depths"]), hidden_sizes=list(SMALL["dims"]))
    body = randomize(transformers.ConvNextModel(cfg))  # keys without "convnext.", no classifier
    extractor = convnext.create_model("convnext_atto", num_classes=0, **SMALL).eval()
    report = load_weights(extractor, body.state_dict())
    assert report.layout == "hf" and not (report.missing or report.unexpected or report.reinitialized)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert (extractor(x) - body(x).pooler_output).abs().max().item() <= 1e-4
    # into a classifier: everything but the head loads, the head stays fresh with a warning
    classifier = convnext.create_model("convnext_atto", num_classes=3, **SMALL)
    with pytest.warns(UserWarning, match="checkpoint has no classifier"):
        report = load_weights(classifier, body.state_dict())
    assert report.reinitialized == ["head.fc.weight", "head.fc.bias"] and not report.missing
    # exported from a classifier-less model it is a ConvNextModel state dict again
    transformers.ConvNextModel(cfg).load_state_dict(from_ours(extractor.state_dict(), "hf"), strict=True)  # raises on any mismatch


# --- Hugging Face model folders: what transformers' from_pretrained reads ---

def _tiny_classifier(tmp_path, class_names):
    model = randomize(convnext.create_model("convnext_atto", num_classes=len(class_names), **SMALL)).eval()
    path = tmp_path / "ours.safetensors"
    save_model(model, path, ModelInfo(model.cfg, "convnext_atto", class_names=class_names))
    return model, path


def test_hf_folder_loads_in_transformers_with_labels_and_same_logits(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = ["cat", "dog", "eel"]
    model, path = _tiny_classifier(tmp_path, names)
    out = tmp_path / "hf-model"
    assert cli_main(["convert", str(path), str(out), "--to", "hf"]) == 0
    assert "Hugging Face model folder" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    hf_model = transformers.ConvNextForImageClassification.from_pretrained(out).eval()
    assert hf_model.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert list(hf_model.config.depths) == list(SMALL["depths"]) and hf_model.config.layer_norm_eps == 1e-6
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, model(x), rtol=1e-5, atol=1e-5)
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__.startswith("ConvNextImageProcessor")
    assert processor.size == {"shortest_edge": 224} and processor.crop_pct == 0.875
    from PIL import Image
    pixels = processor(Image.new("RGB", (300, 200), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    # pure red through our ImageNet normalisation
    torch.testing.assert_close(pixels[0, :, 100, 100], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224,
                                                                      -0.406 / 0.225]), rtol=1e-3, atol=1e-3)
    # a second conversion into the same folder needs --force
    assert cli_main(["convert", str(path), str(out), "--to", "hf"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_hf_folder_for_a_backbone_is_a_convnext_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = randomize(convnext.create_model("convnext_atto", features_only=True, out_indices=(1, 3), **SMALL))
    export_weights(backbone.eval(), tmp_path / "bb", layout="hf")
    hf_backbone = transformers.ConvNextBackbone.from_pretrained(tmp_path / "bb").eval()
    assert hf_backbone.config.out_features == ["stage2", "stage4"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(x), hf_backbone(x).feature_maps
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_hf_folder_refuses_models_transformers_does_not_have(tmp_path):
    overlapping_stem = convnext.create_model("convnext_atto", num_classes=4, stem_kernel_size=7)
    for name, model, why in (
            ("roadmap_patchify", convnext.create_model("roadmap_patchify", num_classes=4), "ArchConfig.layout"),
            ("convnext_isotropic_small", convnext.create_model("convnext_isotropic_small", num_classes=4),
             "has no isotropic model"),
            ("overlapping_stem", overlapping_stem, "this model's overlaps")):  # transformers' stem is a patchify
        with pytest.raises(convnext.errors.CheckpointError, match=f"cannot export in the hf layout: .*{why}"):
            export_weights(model, tmp_path / name, layout="hf")
        assert not (tmp_path / name).exists()


# Models that share every key (and, for some, every shape) with a library's ConvNeXt but that the library builds
# differently or not at all: each is refused in that layout, naming what differs, and nothing is written.
UNBUILDABLE = [
    # the silent ones: same keys, same shapes, other numbers computed
    ("official", dict(activation="relu"), "ArchConfig.activation='gelu', this model has 'relu'"),
    ("torchvision", dict(activation="relu"), "ArchConfig.activation='gelu', this model has 'relu'"),
    ("timm", dict(stem_kernel_size=7), "this model's overlaps"),
    # the ones their load would refuse, now refused here, before a file exists
    ("official", dict(kernel_size=5), "ArchConfig.kernel_size=7, this model has 5"),
    ("torchvision", dict(mlp_ratio=2.0), "ArchConfig.mlp_ratio=4.0, this model has 2.0"),
    ("timm", dict(mlp_ratio=2.0), "ArchConfig.mlp_ratio=4.0, this model has 2.0"),
    ("hf", dict(kernel_size=5), "ArchConfig.kernel_size=7, this model has 5"),
    ("official", dict(depths=(1, 1, 2), dims=(16, 32, 64)), "builds 4 stages, this model has 3"),
    ("official", dict(stem_patch_size=2), "ArchConfig.stem_patch_size=4, this model has 2"),
    ("timm", dict(stem_patch_size=2), "ArchConfig.stem_patch_size=4, this model has 2"),
    ("timm", dict(depths=(1, 1, 2), dims=(16, 32, 64)), "builds 4 stages, this model has 3"),
    ("torchvision", dict(layer_scale_init=None), "layer scale in every block"),
    ("torchvision", dict(in_chans=1), "takes 3 input channels, this model's 1"),
    ("timm", dict(stem_dim=24), "as wide as its first stage (16), this model's is 24"),
    ("timm", dict(norm="batchnorm"), "ArchConfig.norm='layernorm', this model has 'batchnorm'"),
]


@pytest.mark.parametrize("layout,change,why", UNBUILDABLE)
def test_layouts_refuse_models_their_library_cannot_build(layout, change, why, tmp_path):
    model = convnext.create_model("convnext_atto", num_classes=4, **{**SMALL, **change})
    for suffix in (".safetensors", ".pth"):
        with pytest.raises(CheckpointError, match=f"cannot export in the {layout} layout: .*{re.escape(why)}.*"
                                                  "layout 'ours'"):
            export_weights(model, tmp_path / f"m{suffix}", layout=layout)
        assert not (tmp_path / f"m{suffix}").exists()
    export_weights(model, tmp_path / "ours.safetensors")  # our layout holds every model


def test_what_the_libraries_can_build_is_exported_and_matches_them(tmp_path, monkeypatch):
    """The other side of the refusals: models off the paper's defaults that a library does build are exported, and
    that library, built with the matching arguments, loads the file strictly and computes the same logits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x = torch.randn(2, 3, 48, 64)

    def same(ours, theirs):
        a, b = logits(ours, x), logits(theirs.eval(), x)
        assert b.abs().max() > 1.0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)

    # timm: any kernel size, ReLU
    ours = randomize(convnext.create_model("convnext_atto", num_classes=5, **SMALL, kernel_size=5, activation="relu"))
    path = export_weights(ours, tmp_path / "timm.safetensors", layout="timm")
    theirs = timm.create_model("convnext_atto", num_classes=5, **SMALL, kernel_sizes=5, act_layer="relu",
                               conv_mlp=False)
    from safetensors.torch import load_file
    theirs.load_state_dict(load_file(str(path)), strict=True)
    same(ours, theirs)
    # transformers: any patch size and number of stages, ReLU (hidden_act)
    ours = randomize(convnext.create_model("convnext_atto", num_classes=5, depths=(1, 2, 1), dims=(16, 32, 64),
                                           stem_patch_size=2, activation="relu"))
    export_weights(ours, tmp_path / "hf-model", layout="hf")
    theirs = transformers.ConvNextForImageClassification.from_pretrained(tmp_path / "hf-model")
    assert theirs.config.hidden_act == "relu" and theirs.config.patch_size == 2
    same(ours, theirs)
    # torchvision: any number of stages
    ours = randomize(convnext.create_model("convnext_atto", num_classes=5, depths=(1, 2, 1), dims=(16, 32, 64)))
    path = export_weights(ours, tmp_path / "tv.pth", layout="torchvision")
    CN = torchvision.models.convnext.CNBlockConfig
    theirs = torchvision.models.convnext.ConvNeXt([CN(16, 32, 1), CN(32, 64, 2), CN(64, None, 1)], num_classes=5)
    theirs.load_state_dict(torch.load(path, weights_only=True), strict=True)
    same(ours, theirs)
