"""Backbone use: features_only / out_indices / feature_info, forward_features / forward_head."""

from __future__ import annotations

import itertools

import pytest
import torch

import convnext
from convnext.checkpoint import export_weights
from convnext.weights import load_weights, read_weights
from convnext.weights.layouts import from_ours

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def stage_activations(classifier, x):
    """The classifier's stage outputs, captured with forward hooks."""
    acts = []
    hooks = [s.register_forward_hook(lambda m, i, o: acts.append(o)) for s in classifier.stages]
    with torch.no_grad():
        classifier(x)
    for h in hooks:
        h.remove()
    return acts


ALL_CHOICES = [c for r in range(1, 5) for c in itertools.combinations(range(4), r)]


def test_feature_maps_for_every_out_indices_choice_equal_classifier_activations():
    classifier = randomize(convnext.create_model("convnext_atto", **SMALL))
    x = torch.randn(2, 3, 64, 96)
    acts = stage_activations(classifier, x)
    for out_indices in ALL_CHOICES:
        backbone = convnext.create_model("convnext_atto", features_only=True, out_indices=out_indices, **SMALL)
        report = load_weights(backbone, classifier.state_dict())
        assert report.ignored  # the head (and any stage after the last output) is not loaded
        randomize(backbone.feature_norms, seed=sum(out_indices))  # norms with non-trivial affine
        with torch.no_grad():
            feats = backbone(x)
        assert len(feats) == len(out_indices) == len(backbone.feature_info)
        for f, info, i in zip(feats, backbone.feature_info, out_indices):
            stride = 4 * 2 ** i
            assert info == {"index": i, "num_chs": SMALL["dims"][i], "reduction": stride, "module": f"stages.{i}"}
            assert f.shape == (2, SMALL["dims"][i], 64 // stride, 96 // stride)
            # each output is exactly the classifier's stage activation through its own LayerNorm
            ln = backbone.feature_norms[str(i)]
            expected = torch.nn.functional.layer_norm(
                acts[i].permute(0, 2, 3, 1), (acts[i].shape[1],), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
            assert torch.equal(f, expected), out_indices
        # stages after the last requested one are not built
        assert len(backbone.stages) == max(out_indices) + 1 and not hasattr(backbone, "head")


def test_backbone_defaults_negative_indices_and_bad_indices():
    b = convnext.create_model("convnext_atto", features_only=True, **SMALL)
    assert b.out_indices == (0, 1, 2, 3) and [f["reduction"] for f in b.feature_info] == [4, 8, 16, 32]
    assert convnext.create_model("convnext_atto", features_only=True, out_indices=(-1, -2), **SMALL).out_indices == (2, 3)
    with pytest.raises(ValueError, match=r"out_indices \(4,\) must be stage numbers in 0\.\.3"):
        convnext.create_model("convnext_atto", features_only=True, out_indices=(4,), **SMALL)
    with pytest.raises(ValueError, match="at most once"):
        convnext.create_model("convnext_atto", features_only=True, out_indices=(1, -3), **SMALL)
    with pytest.raises(ValueError, match="pass features_only=True"):
        convnext.create_model("convnext_atto", out_indices=(1,), **SMALL)
    with pytest.raises(ValueError, match="has no head"):
        b.forward_head(torch.zeros(1, 128, 2, 2))
    with pytest.raises(ValueError, match="has no classifier"):
        b.reset_classifier(3)


def test_classifier_feature_info_forward_features_and_forward_head():
    model = randomize(convnext.create_model("convnext_atto", num_classes=5, **SMALL))
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [(16, 4), (32, 8), (64, 16), (128, 32)]
    x = torch.randn(2, 3, 64, 64)
    acts = stage_activations(model, x)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(feats, acts[-1])
        pre = model.forward_head(feats, pre_logits=True)
        ln = model.head.norm
        expected = torch.nn.functional.layer_norm(feats.mean((2, 3)), (128,), ln.weight, ln.bias, 1e-6)
        assert torch.allclose(pre, expected, atol=1e-6) and pre.shape == (2, 128)
        assert torch.equal(model.forward_head(feats), model(x))
        assert torch.allclose(model(x), pre @ model.head.fc.weight.T + model.head.fc.bias, atol=1e-5)


def test_isotropic_and_resnet_backbones():
    iso = convnext.create_model("convnext_isotropic_small", depths=(2,), dims=(32,), features_only=True)
    assert iso.feature_info == [{"index": 0, "num_chs": 32, "reduction": 16, "module": "stages.0"}]
    assert iso(torch.randn(1, 3, 64, 48))[0].shape == (1, 32, 4, 3)
    # BatchNorm nets hand their stage outputs over unchanged (no extra norm, as torchvision's ResNet backbone)
    resnet = randomize(convnext.create_model("resnet50", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_dim=8))
    backbone = convnext.create_model("resnet50", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_dim=8,
                                     features_only=True, out_indices=(1, 3))
    load_weights(backbone, resnet.state_dict())
    x = torch.randn(1, 3, 64, 64)
    acts = stage_activations(resnet, x)
    with torch.no_grad():
        feats = backbone.eval()(x)
    assert torch.equal(feats[0], acts[1]) and torch.equal(feats[1], acts[3])


def test_pretrained_backbone_from_a_classifier_file_and_backbone_export(tmp_path):
    classifier = randomize(convnext.create_model("convnext_atto", **SMALL))
    path = export_weights(classifier, tmp_path / "official.pth", layout="official")
    backbone = convnext.create_model("convnext_atto", pretrained=path, features_only=True, out_indices=(0, 2), **SMALL)
    x = torch.randn(1, 3, 64, 64)
    acts = stage_activations(classifier, x)
    with torch.no_grad():
        feats = backbone(x)
    # fresh feature norms (weight 1, bias 0), as the official detection/segmentation code starts them
    for f, i in zip(feats, (0, 2)):
        ref = torch.nn.functional.layer_norm(acts[i].permute(0, 2, 3, 1), (acts[i].shape[1],), eps=1e-6)
        assert torch.allclose(f, ref.permute(0, 3, 1, 2), atol=1e-6)
    # a backbone exports with its norms as norm0.. (official backbone) and reloads exactly
    randomize(backbone.feature_norms, seed=3)
    out = export_weights(backbone, tmp_path / "backbone.pth", layout="official")
    sd = torch.load(out, weights_only=True)["model"]
    assert {"norm0.weight", "norm2.bias"} <= set(sd) and not any(k.startswith("head") for k in sd)
    again = convnext.create_model("convnext_atto", features_only=True, out_indices=(0, 2), **SMALL)
    load_weights(again, out)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(x), backbone(x)))
    # a detection/segmentation checkpoint: backbone.* plus neck/head keys that are not ours
    mmseg = {"state_dict": {**{f"backbone.{k}": v for k, v in sd.items()},
                            "decode_head.conv_seg.weight": torch.zeros(3, 3)}, "meta": {}}
    third = convnext.create_model("convnext_atto", features_only=True, out_indices=(0, 2), **SMALL)
    assert load_weights(third, mmseg).layout == "official"
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(third(x), backbone(x)))
    # layouts without per-output norms refuse a backbone instead of dropping its weights
    with pytest.raises(ValueError, match=r"no place in the timm layout \(first: feature_norms\.0\.weight"):
        export_weights(backbone, tmp_path / "t.pth", layout="timm")


def test_backbone_matches_transformers_convnext_backbone():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(depths=list(SMALL["depths"]), hidden_sizes=list(SMALL["dims"]),
                                      out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = transformers.ConvNextBackbone(cfg)
    ours = randomize(convnext.create_model("convnext_atto", features_only=True, **SMALL))
    hf.load_state_dict(from_ours(ours.state_dict(), "hf"), strict=True)
    hf.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        theirs = hf(x).feature_maps
        mine = ours(x)
    assert len(theirs) == 4
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4
    # and back: their backbone state dict loads into ours exactly
    again = convnext.create_model("convnext_atto", features_only=True, **SMALL)
    assert load_weights(again, hf.state_dict()).layout == "hf"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_backbone_checkpoint_in_our_layout_round_trips(tmp_path):
    backbone = randomize(convnext.create_model("convnext_atto", features_only=True, out_indices=(1, 3), **SMALL))
    path = export_weights(backbone, tmp_path / "bb.safetensors")
    assert set(read_weights(path).state) == set(backbone.state_dict())
    model, _ = convnext.checkpoint.load_model(path, model_name="convnext_atto", features_only=True,
                                              out_indices=(1, 3), **SMALL)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), backbone(x)))


@pytest.mark.parametrize("out_indices", [(0, 1, 2), (3,), (1, 2, 3)])
def test_partial_out_indices_load_and_write_the_official_backbone_layout(tmp_path, out_indices):
    # The official detection/segmentation backbone always carries norm0..norm3 and every stage.
    full = randomize(convnext.create_model("convnext_atto", features_only=True, **SMALL))
    official = from_ours(full.state_dict(), "official")
    assert {f"norm{i}.weight" for i in range(4)} <= set(official)
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in official.items()}}, path)
    part = convnext.create_model("convnext_atto", features_only=True, out_indices=out_indices, **SMALL)
    report = load_weights(part, path)  # strict: the norms it does not use are reported, not a mismatch
    unused = {f"feature_norms.{i}.{t}" for i in range(4) if i not in out_indices for t in ("weight", "bias")}
    assert unused <= set(report.ignored) and not report.missing and not report.unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = [f for i, f in enumerate(full(x)) if i in out_indices]
        assert all(torch.equal(a, b) for a, b in zip(part(x), expected))
    # written back in the official layout, it has a norm for every stage it builds (fresh where unused),
    # so a backbone built with every stage (what the official code builds for out_indices=[1, 2, 3])
    # loads it strictly
    out = export_weights(part, tmp_path / "part.pth", layout="official")
    sd = torch.load(out, weights_only=True)["model"]
    assert {f"norm{i}.weight" for i in range(len(part.stages))} <= set(sd)
    for i in range(len(part.stages)):
        if i not in out_indices:
            assert torch.equal(sd[f"norm{i}.weight"], torch.ones(SMALL["dims"][i]))
            assert torch.equal(sd[f"norm{i}.bias"], torch.zeros(SMALL["dims"][i]))
    if len(part.stages) == 4:
        strict = convnext.create_model("convnext_atto", features_only=True, **SMALL)
        report = load_weights(strict, out, strict=True)
        assert not report.missing and not report.unexpected and not report.ignored
        with torch.no_grad():
            feats = strict(x)
            assert all(torch.equal(feats[i], f) for i, f in zip(out_indices, part(x)))
