"""optimize_for_inference: folded/fused models against the unmodified ones, every variant and roadmap step,
the fold algebra against explicit layers, precision options, compile fallback, unfoldable models."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convnext
from convnext.infer import fuse
from convnext.infer.fuse import (
    ChannelNorm,
    FastBlock,
    InferenceModel,
    fold_affine_into_next,
    fold_norm_into_previous,
    optimize_for_inference,
)
from convnext.models import ArchConfig, ConvNeXt
from convnext.models.layers import LayerNorm2d

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=10)


def tiny(name: str, **kw) -> ConvNeXt:
    cfg = convnext.get_config(name)
    over = dict(num_classes=10)
    if len(cfg.dims) == 1:  # isotropic: one stage
        over.update(depths=(2,), dims=(32,))
    else:
        over.update(depths=(1, 2, 1, 1), dims=tuple(d // (cfg.dims[0] // 16 or 1) for d in cfg.dims))
        if cfg.stem_dim is not None:
            over["stem_dim"] = 16
    over.update(kw)
    torch.manual_seed(0)
    return randomize(convnext.create_model(name, **over))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm affines, BN statistics and layer scales, so that every fold changes the numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) and m.weight is not None:
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("conv.bias") or name.endswith("pwconv1.bias") or name.endswith("pwconv2.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def quiet_optimize(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimize_for_inference(model, **kw)


# ------------------------------------------------------------------------------------------ fold algebra


def test_bn_fold_equals_conv_then_bn():
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    randomize(nn.Sequential(conv, bn), seed=1)
    x = torch.randn(2, 4, 9, 9)
    ref = bn(conv(x))
    with torch.no_grad():
        fold_norm_into_previous(conv, bn)
    assert conv.bias is not None  # a bias-free conv gets BN's shift as its bias
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_affine_fold_into_strided_2x2_conv():
    # the separate downsampling layer: LN -> 2x2 stride-2 conv; the shift goes through all 4 kernel taps
    conv = nn.Conv2d(5, 7, 2, stride=2)
    scale, shift = torch.rand(5) + 0.5, torch.randn(5)
    x = torch.randn(3, 5, 8, 8)
    ref = conv(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    with torch.no_grad():
        fold_affine_into_next(scale, shift, conv)
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_affine_fold_into_linear():
    fc = nn.Linear(6, 3)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    x = torch.randn(4, 6)
    ref = fc(x * scale + shift)
    with torch.no_grad():
        fold_affine_into_next(scale, shift, fc)
    torch.testing.assert_close(fc(x), ref, atol=1e-5, rtol=1e-5)


def test_channel_norm_is_layernorm_without_affine():
    x = torch.randn(2, 8, 5, 5)
    ref = LayerNorm2d(8)
    torch.testing.assert_close(ChannelNorm(8, ref.eps)(x), ref(x))


# ------------------------------------------------------------------------------------------ whole models


# Numerics on every structurally distinct model: shrunk to tiny widths the family sizes only differ in
# depth, and roadmap kernels 5/9/11 are kernel 7's structure (test_fold_counts_on_meta covers every name).
DISTINCT = ["convnext_atto", "convnext_tiny", "convnext_isotropic_small"] + [
    n for n in convnext.list_models("r*") if n not in ("roadmap_kernel5", "roadmap_kernel9")
]


@pytest.mark.parametrize("name", DISTINCT)
def test_every_model_fused_equals_reference_fp32(name):
    model = tiny(name)
    fused = quiet_optimize(model)
    assert isinstance(fused, InferenceModel)
    assert fused.report.folds > 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    out = fused(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_odd_input_size_and_nchw_path():
    model = tiny("convnext_tiny")
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        ref = model(x)
    for kw in (dict(channels_last=False), dict(onednn=False), dict(fast_blocks=False)):
        torch.testing.assert_close(quiet_optimize(model, **kw)(x), ref, atol=1e-4, rtol=1e-4)


def _expected_counts(cfg: ArchConfig) -> dict:
    """Hand count of the folds a config allows (see fuse.py's module docstring for the rules)."""
    blocks = sum(cfg.depths)
    bn = cfg.norm == "batchnorm"
    # blocks with a projection shortcut (conv + norm): width or stride changes inside the block
    projections = int(cfg.stem_width != cfg.dims[0]) + (len(cfg.dims) - 1) * (cfg.downsample == "in_block")
    counts = dict(bn_into_conv=0, norm_affine_into_conv=0, gamma_into_conv=0, gamma_into_norm=0,
                  head_norm_into_fc=int(cfg.head_norm and cfg.num_classes > 0), fast_blocks=0)
    if bn:
        counts["bn_into_conv"] += (3 if cfg.norms == "per_conv" else 1) * blocks
        counts["bn_into_conv"] += int(cfg.stem == "resnet" or cfg.stem_norm) + projections
    elif cfg.norms == "single" and cfg.layout == "dwconv_first":
        counts["norm_affine_into_conv"] += blocks  # LN after dwconv -> pwconv1
    if cfg.downsample == "separate":
        counts["norm_affine_into_conv" if not bn else "bn_into_conv"] += len(cfg.dims) - 1
    if cfg.layer_scale_init:
        counts["gamma_into_conv"] = blocks
    # FastBlock: dwconv first, one activation, and no norm left after the 1x1 convs (a single norm, or
    # per-conv BatchNorms, which fold away entirely)
    if cfg.layout == "dwconv_first" and cfg.activations == "single" and (cfg.norms == "single" or bn):
        counts["fast_blocks"] = blocks - projections
    return counts


@pytest.mark.parametrize("name", convnext.list_models())
def test_fold_counts_on_meta(name):
    """Every registered model (full widths, one block per stage, meta tensors: no memory, no compute) folds
    exactly what its config allows."""
    cfg = convnext.get_config(name)
    with torch.device("meta"):
        model = convnext.create_model(name, depths=(1,) * len(cfg.depths))
    fused = quiet_optimize(model)
    assert fused.report.as_dict() == _expected_counts(model.cfg)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(getattr(m, "gamma", None) is not None for m in fused.modules())


def test_convnext_tiny_and_resnet50_full_size_counts_by_hand():
    with torch.device("meta"):
        fused = quiet_optimize(convnext.create_model("convnext_tiny"))
    # 18 blocks: LN->pwconv1 and gamma->pwconv2 each; 3 downsampling LNs; the head LN into fc
    assert fused.report.as_dict() == dict(bn_into_conv=0, norm_affine_into_conv=21, gamma_into_conv=18,
                                          gamma_into_norm=0, head_norm_into_fc=1, fast_blocks=18)
    with torch.device("meta"):
        fused = quiet_optimize(convnext.create_model("resnet50"))
    # stem BN + 16 blocks x 3 BNs + 4 projection-shortcut BNs
    assert fused.report.bn_into_conv == 53


def test_ln_before_padded_conv_keeps_its_affine_and_stays_exact():
    # bottleneck with a norm after every conv and one activation: pwconv1 -> LN -> (no act) -> padded 3x3.
    # Folding LN's shift into a padded conv would be wrong at the border, so it must stay.
    cfg = convnext.get_config("roadmap_inverted").replace(norm="layernorm", conv_bias=True, activations="single",
                                                          depths=(1, 1, 1, 1), dims=(16, 32, 64, 128),
                                                          num_classes=10)
    torch.manual_seed(0)
    model = randomize(ConvNeXt(cfg))
    fused = quiet_optimize(model)
    block = fused.model.stages[0].blocks[0]
    assert type(block.norm1) is LayerNorm2d and block.norm1.weight is not None  # before the padded dwconv
    assert type(block.norm2) is LayerNorm2d  # followed by the activation
    assert fused.report.gamma_into_norm == 4  # gamma after pwconv2's LN goes into that LN's affine
    assert fused.report.norm_affine_into_conv == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(fused(x), ref, atol=1e-4, rtol=1e-4)


def test_original_untouched_and_result_eval_only():
    model = tiny("convnext_tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = quiet_optimize(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in fused.parameters())
    with pytest.raises(RuntimeError, match="eval-only"):
        fused.train()
    fused.eval()  # allowed
    # attributes of the wrapped ConvNeXt stay reachable
    assert fused.cfg == model.cfg and fused.num_classes == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval().forward_features(x)
    torch.testing.assert_close(fused.forward_features(x), ref, atol=1e-4, rtol=1e-4)


def test_onednn_fused_gemms_are_used_on_cpu():
    if not fuse._onednn_linear_ok(torch.float32):
        pytest.skip("this torch build/CPU has no oneDNN fused linear")
    from torch.profiler import ProfilerActivity, profile

    fused = quiet_optimize(tiny("convnext_tiny"))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused(torch.randn(1, 3, 64, 64))
    names = [e.name for e in prof.events()]
    # 5 fast blocks x (GELU-fused + residual-fused GEMM)
    assert names.count("mkldnn::_linear_pointwise") == 10
    assert "aten::gelu" not in names


# ------------------------------------------------------------------------------------------ unfoldable


def test_non_convnext_module_returned_unchanged_with_warning():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.warns(RuntimeWarning, match="not a convnext.ConvNeXt"):
        assert optimize_for_inference(m) is m


def test_model_without_foldable_pairs_returned_unchanged_with_warning():
    # LN after every conv, each followed by an activation or the residual add; no layer scale, no head LN,
    # no separate downsampling: nothing is foldable.
    cfg = ArchConfig(depths=(1, 1), dims=(16, 32), mlp_ratio=0.5, layout="bottleneck", depthwise=False,
                     kernel_size=3, norm="layernorm", norms="per_conv", activation="relu", activations="per_conv",
                     downsample="in_block", head_norm=False, layer_scale_init=None, stem_norm=True, num_classes=5)
    model = ConvNeXt(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="no foldable"):
        out = optimize_for_inference(model)
    assert out is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ precision / compile


DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def test_precision_validation(monkeypatch):
    monkeypatch.setattr(fuse, "_cpu_has_bf16_units", lambda: False)
    model = tiny("convnext_atto")
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        optimize_for_inference(model, precision="fp16")
    with pytest.raises(ValueError, match="use one of"):
        optimize_for_inference(model, precision="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            optimize_for_inference(model, device="cuda")
    assert fuse.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("autocast", [True, False])
def test_bf16_top1_agreement(autocast):
    torch.manual_seed(0)
    model = randomize(convnext.create_model("convnext_atto", num_classes=100, depths=(1, 1, 1, 1),
                                            dims=(16, 32, 64, 128), head_init_scale=50.0))
    fused = quiet_optimize(model, precision="bf16", autocast=autocast)
    assert fused.precision == "bf16"
    if not autocast:
        assert all(p.dtype == torch.bfloat16 for p in fused.parameters())
    x = torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    out = fused(x)
    assert out.dtype == torch.float32
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= 0.99, agreement


def test_cpu_bf16_slowdown_is_measured_and_warned(monkeypatch):
    assert fuse.cpu_bf16_slowdown() > 0
    monkeypatch.setattr(fuse, "cpu_bf16_slowdown", lambda: 9.7)
    monkeypatch.setattr(fuse, "_cpu_has_bf16_units", lambda: False)
    with pytest.warns(RuntimeWarning, match="9.7x slower than fp32.*auto picks fp32 here"):
        optimize_for_inference(tiny("convnext_atto"), precision="bf16")


@pytest.mark.parametrize("units, isa_cap, expected", [
    (False, None, "fp32"),                      # AVX2 / AVX-512 without BF16: bf16 would be emulated
    (True, None, "bf16"),                       # AVX512-BF16 or AMX
    (True, "AVX512_CORE_VNNI", "fp32"),         # oneDNN capped below its bf16 kernels
    (True, "avx512_core_amx", "bf16"),          # a cap at or above them changes nothing
    (True, "AVX2", "fp32"),
])
def test_auto_precision_follows_native_bf16(monkeypatch, units, isa_cap, expected):
    monkeypatch.setattr(fuse, "_cpu_has_bf16_units", lambda: units)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if isa_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert fuse.resolve_precision("auto", torch.device("cpu")) == expected
    assert fuse.cpu_native_bf16()[0] == (expected == "bf16")
    monkeypatch.setattr(fuse, "cpu_bf16_slowdown", lambda: 1.0)  # this test machine may emulate bf16
    fused = optimize_for_inference(tiny("convnext_atto"))
    assert fused.precision == expected
    # bf16 chosen by auto on CPU runs fully cast (no autocast): every weight is bf16, the logits fp32
    assert {p.dtype for p in fused.parameters()} == {DTYPE[expected]}
    assert fused.autocast is (expected != "bf16")
    with torch.no_grad():
        assert fused(torch.randn(2, 3, 64, 64)).dtype == torch.float32


def test_compile_unavailable_degrades_to_eager(monkeypatch):
    monkeypatch.setattr(fuse, "compile_available", lambda device: (False, "no C++ compiler"))
    model = tiny("convnext_atto")
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable.*running eager"):
        fused = optimize_for_inference(model, compile=True)
    assert not fused.compiled
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_compile_failure_at_first_call_falls_back(monkeypatch):
    def broken_compile(model, **kw):
        def run(x):
            raise RuntimeError("backend exploded")
        return run

    monkeypatch.setattr(fuse, "compile_available", lambda device: (True, ""))
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny("convnext_atto")
    fused = optimize_for_inference(model, compile=True)
    assert fused.compiled
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*backend exploded"):
        out = fused(x)
    assert not fused.compiled
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_with_freezing_matches_reference():
    ok, why = fuse.compile_available(torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    model = tiny("convnext_atto")
    fused = optimize_for_inference(model, compile=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(fused(x), ref, atol=1e-4, rtol=1e-4)
    assert fused.compiled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last():
    model = tiny("convnext_atto")
    fused = optimize_for_inference(model.cuda())
    assert fused.precision in ("bf16", "fp16")
    x = torch.randn(64, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(x)
    assert (fused(x).argmax(1) == ref.argmax(1)).float().mean() >= 0.99
