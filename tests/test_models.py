"""The model zoo and the roadmap: structure, parameter counts and FLOPs against the paper and
against independent implementations (torchvision, timm)."""

from __future__ import annotations

import pytest
import torch

import convnext
from convnext.models import ROADMAP, ArchConfig, ConvNeXt, get_entry
from convnext.models.summary import roadmap_rows


def meta_model(name: str, **kw) -> ConvNeXt:
    with torch.device("meta"):
        return convnext.create_model(name, **kw)


# Paper Table / FACTS.md: params (M) and GFLOPs at 224 for the family.
FAMILY = {
    "convnext_tiny": (28.589128, 4.47),
    "convnext_small": (50.2, 8.7),
    "convnext_base": (88.6, 15.4),
    "convnext_large": (197.8, 34.4),
    "convnext_xlarge": (350.0, 60.9),
    "convnext_isotropic_small": (22.0, 4.3),
    "convnext_isotropic_base": (87.0, 16.9),
    "convnext_isotropic_large": (306.0, 59.7),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_params_and_flops_match_paper(name):
    params_m, gflops = FAMILY[name]
    model = meta_model(name)
    n = convnext.count_params(model) / 1e6
    # isotropic figures are given to 2-3 significant digits in the paper
    tol = 0.005 if "isotropic" not in name else 0.02
    assert abs(n - params_m) / params_m < tol, (name, n)
    assert convnext.count_flops(model) == pytest.approx(gflops, abs=0.1)


def test_convnext_tiny_exact_param_count():
    assert convnext.count_params(meta_model("convnext_tiny")) == 28_589_128


def test_small_variants_match_timm_param_counts():
    timm = pytest.importorskip("timm")
    for name in ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"]:
        with torch.device("meta"):
            ref = timm.create_model(name, pretrained=False)
        assert convnext.count_params(meta_model(name)) == sum(p.numel() for p in ref.parameters()), name


def test_flops_match_timm_model_counted_the_same_way():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model("convnext_tiny", pretrained=False)
    assert convnext.count_flops(meta_model("convnext_tiny")) == pytest.approx(convnext.count_flops(ref), rel=1e-6)


def _micro_counts_by_hand(kernel: int, mlp_ratio: int) -> tuple[int, int, int]:
    """Parameters, MACs at 28 px and first-block parameters of the 1-1-1, 32-64-128 small-input network (1 channel,
    10 classes), layer by layer: stem 2x2 conv 1->32 + norm; one block per stage (dw k x k, norm, 1x1 up x
    mlp_ratio, 1x1 down, layer scale); downsampling norm + 2x2 conv; head LN + fc. LayerNorm and BatchNorm both
    learn 2 x channels. MACs on the 14x14, 7x7 and 3x3 maps (norms and activations not counted, as in the paper's
    tables)."""
    k, r = kernel * kernel, mlp_ratio
    stem = 1 * 32 * 4 + 32 + 2 * 32
    block = {d: k * d + d + 2 * d + (d * r * d + r * d) + (r * d * d + d) + d for d in (32, 64, 128)}
    down = {(a, b): 2 * a + 4 * a * b + b for a, b in ((32, 64), (64, 128))}
    head = 2 * 128 + 128 * 10 + 10
    params = stem + sum(block.values()) + sum(down.values()) + head
    macs = (14 * 14 * 32 * 4  # stem
            + 196 * (k * 32 + 2 * 32 * r * 32) + 49 * 64 * 32 * 4  # stage 1 + downsampling to 7x7
            + 49 * (k * 64 + 2 * 64 * r * 64) + 9 * 128 * 64 * 4  # stage 2 + downsampling to 3x3
            + 9 * (k * 128 + 2 * 128 * r * 128) + 128 * 10)  # stage 3 + classifier
    return params, macs, block[32]


def test_small_input_model_params_flops_and_maps_by_hand():
    model = convnext.create_model("convnext_micro_small_input", in_chans=1, num_classes=10).eval()
    params, macs, first_block = _micro_counts_by_hand(kernel=7, mlp_ratio=4)
    assert first_block == 10_048
    assert convnext.count_params(model) == params == 228_138
    assert convnext.count_flops(model, (1, 28, 28)) * 1e9 == pytest.approx(macs, abs=0.5) and macs == 5_631_040
    feats = convnext.create_model("convnext_micro_small_input", in_chans=1, features_only=True)
    for size, maps in ((28, [14, 7, 3]), (32, [16, 8, 4]), (64, [32, 16, 8])):
        assert [f.shape[-1] for f in feats(torch.zeros(1, 1, size, size))] == maps
    # every small-input member: the family member's first three stages, behind a stride-2 stem
    for size in ("atto", "femto", "pico", "nano", "tiny"):
        small, full = get_entry(f"convnext_{size}_small_input").config, get_entry(f"convnext_{size}").config
        assert (small.depths, small.dims) == (full.depths[:3], full.dims[:3])
        assert small.stem_patch_size == 2 and small.total_stride == 8 and small.layer_scale_init == 1.0


def test_demo_model_params_and_flops_by_hand():
    # convnext_micro_small_input with 5x5 depthwise convs, MLP ratio 2 and BatchNorm (the head keeps its LN)
    model = convnext.create_model("convnext_micro_bn_small_input", in_chans=1, num_classes=10)
    assert isinstance(model.stem.norm, torch.nn.BatchNorm2d) and isinstance(model.stages[1].downsample.norm, torch.nn.BatchNorm2d)
    params, macs, first_block = _micro_counts_by_hand(kernel=5, mlp_ratio=2)
    assert first_block == 5_120
    assert convnext.count_params(model) == params == 136_298
    assert convnext.count_flops(model, (1, 28, 28)) * 1e9 == pytest.approx(macs, abs=0.5) and macs == 3_182_144
    assert get_entry("convnext_micro_bn_small_input").config == get_entry("convnext_micro_small_input").config.replace(
        kernel_size=5, mlp_ratio=2.0, norm="batchnorm")


def test_overlapping_stem_sees_a_padded_window_per_patch_and_keeps_the_map_size():
    # stem_kernel_size 4 at patch 2: output pixel (i, j) is the 4x4 window of the input padded by 1 whose corner is
    # input pixel (2i - 1, 2j - 1); checked by an explicit loop, not by another conv
    model = convnext.create_model("convnext_micro_bn_small_input", in_chans=1, num_classes=10, stem_kernel_size=4)
    conv = model.stem.conv
    x = torch.randn(1, 1, 28, 28)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    out = conv(x)
    assert out.shape == (1, 32, 14, 14)
    for i, j in ((0, 0), (5, 9), (13, 13)):
        window = padded[0, 0, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
        expect = (conv.weight[:, 0] * window).sum((1, 2)) + conv.bias
        torch.testing.assert_close(out[0, :, i, j], expect, rtol=1e-5, atol=1e-5)
    # parameters and MACs by hand: only the stem's kernel grows, from 2x2 to 4x4
    params, macs, _ = _micro_counts_by_hand(kernel=5, mlp_ratio=2)
    assert convnext.count_params(model) == params + 32 * (16 - 4)
    assert convnext.count_flops(model, (1, 28, 28)) * 1e9 == pytest.approx(macs + 14 * 14 * 32 * (16 - 4), abs=0.5)
    # every kernel >= the patch keeps the map at size / patch, odd or even, at any valid size
    for patch, kernel, size in ((2, 3, 28), (2, 5, 32), (4, 9, 64), (4, 7, 32), (1, 3, 16), (4, 4, 32)):
        m = convnext.create_model("convnext_atto", stem_patch_size=patch, stem_kernel_size=kernel, num_classes=3)
        assert m.stem(torch.zeros(1, 3, size, size)).shape[-1] == size // patch
    with pytest.raises(ValueError, match="must be at least stem_patch_size=4"):
        convnext.create_model("convnext_atto", stem_kernel_size=3)
    with pytest.raises(ValueError, match="and odd"):
        convnext.create_model("convnext_atto", stem_patch_size=1, stem_kernel_size=2)
    with pytest.raises(ValueError, match="patchify stem only"):
        convnext.create_model("resnet50", stem_kernel_size=7)


def test_roadmap_order_and_every_step_within_0_2_gflops_of_paper():
    names = [s.name for s in ROADMAP]
    assert names[0] == "resnet50" and names[-1] == "roadmap_separate_downsampling"
    for k in (3, 5, 7, 9, 11):
        # kernel 3 is the move-up step itself
        assert any(s.config.kernel_size == k and s.config.layout == "dwconv_first" for s in ROADMAP)
    for row in roadmap_rows():
        assert abs(row["gmacs"] - row["paper_gflops"]) <= 0.2, row


def test_each_roadmap_step_changes_the_config():
    steps = {s.name: s for s in ROADMAP}
    assert steps["resnet50"].config.replace(layer_scale_init=1e-6) == steps["roadmap_modern_recipe"].config
    prev = None
    for s in ROADMAP:
        if prev is not None and s.name not in ("roadmap_kernel5", "roadmap_kernel7", "roadmap_kernel9", "roadmap_kernel11"):
            assert s.config != prev.config, s.name
        prev = s


def test_resnet50_matches_torchvision_structure_and_outputs():
    tvm = pytest.importorskip("torchvision.models")
    ref = tvm.resnet50().eval()
    ours = convnext.create_model("resnet50").eval()
    assert convnext.count_params(ours) == 25_557_032 == sum(p.numel() for p in ref.parameters())
    # Load torchvision's weights by renaming only: identical numbers prove identical structure.
    rename = [
        ("conv1.", "stem.conv."), ("bn1.", "stem.norm."), ("fc.", "head.fc."),
    ]
    block_rename = {
        "conv1": "pwconv1", "bn1": "norm1", "conv2": "dwconv", "bn2": "norm2",
        "conv3": "pwconv2", "bn3": "norm3", "downsample.0": "shortcut.conv", "downsample.1": "shortcut.norm",
    }
    state = {}
    for k, v in ref.state_dict().items():
        if k.startswith("layer"):
            layer, block, rest = k.split(".", 2)
            for src, dst in block_rename.items():
                if rest.startswith(src + "."):
                    rest = dst + rest[len(src):]
                    break
            k = f"stages.{int(layer[5:]) - 1}.blocks.{block}.{rest}"
        else:
            for src, dst in rename:
                if k.startswith(src):
                    k = dst + k[len(src):]
        state[k] = v
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    assert convnext.count_flops(ours) == pytest.approx(convnext.count_flops(ref), rel=1e-9)


def test_final_roadmap_step_is_convnext_tiny():
    final = ROADMAP[-1].config
    assert final == get_entry("convnext_tiny").config == ArchConfig()
    a, b = meta_model("roadmap_separate_downsampling"), meta_model("convnext_tiny")
    assert [(k, tuple(v.shape)) for k, v in a.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in b.state_dict().items()
    ]


def test_convnext_tiny_matches_timm_parameter_shapes_in_order():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model("convnext_tiny", pretrained=False)
    flat = lambda s: tuple(s) if len(s) != 4 or s[-2:] != (1, 1) else tuple(s[:2])  # noqa: E731
    ours = [flat(tuple(p.shape)) for p in meta_model("convnext_tiny").parameters()]
    theirs = [flat(tuple(p.shape)) for p in ref.parameters()]
    assert ours == theirs


@pytest.mark.parametrize("name", ["convnext_atto", "resnet50", "roadmap_inverted", "roadmap_layernorm", "convnext_isotropic_small"])
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_forward_shapes_batch1_and_odd_sizes(name, size):
    kw = dict(depths=(1,) * len(get_entry(name).config.depths))
    if name == "convnext_isotropic_small":
        kw["dims"] = (32,)
    elif name != "convnext_atto":
        kw["dims"] = tuple(d // 8 for d in get_entry(name).config.dims)
        if get_entry(name).config.stem_dim:
            kw["stem_dim"] = 8
    model = convnext.create_model(name, num_classes=7, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_convnext_tiny_odd_size_223x257_and_batch_3():
    model = convnext.create_model("convnext_tiny", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 223, 257)).shape == (3, 5)


def test_in_chans_1_and_4():
    for c in (1, 4):
        model = convnext.create_model("convnext_atto", in_chans=c, num_classes=3).eval()
        assert model.stem.conv.weight.shape[1] == c
        with torch.no_grad():
            assert model(torch.randn(2, c, 32, 32)).shape == (2, 3)


def test_bad_inputs_give_clear_errors():
    model = convnext.create_model("convnext_atto").eval()
    with pytest.raises(ValueError, match="smaller than the network's total stride 32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="did you mean convnext_tiny"):
        convnext.create_model("convnext_tinyy")
    with pytest.raises(ValueError, match="unknown ArchConfig field"):
        convnext.create_model("convnext_tiny", widht=3)
    with pytest.raises(ValueError, match="norm='groupnorm' is not valid"):
        convnext.create_model("convnext_tiny", norm="groupnorm")


def test_stochastic_depth_linear_schedule_train_vs_eval():
    model = convnext.create_model("convnext_atto", drop_path_rate=0.5)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)
    assert rates == pytest.approx([0.5 * i / (len(rates) - 1) for i in range(len(rates))])
    block = model.stages[3].blocks[-1]
    x = torch.randn(64, 320, 2, 2)
    block.train()
    torch.manual_seed(0)
    branch_dropped = [torch.equal(block(x[i : i + 1]), x[i : i + 1]) for i in range(64)]
    # with p=0.5 roughly half the samples skip the residual branch entirely (output == input)
    assert 15 < sum(branch_dropped) < 49
    block.eval()
    y1, y2 = block(x), block(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, x)


def test_init_layer_scale_and_head_init_scale():
    model = convnext.create_model("convnext_atto", head_init_scale=0.001)
    ref = convnext.create_model("convnext_atto")
    gammas = [b.gamma for s in model.stages for b in s.blocks]
    assert all(torch.all(g == 1e-6) for g in gammas)
    w = model.stages[0].blocks[0].pwconv1.weight
    # trunc_normal_(std=0.02) truncates at +-2 absolute, as the official code does: effectively N(0, 0.02)
    assert 0.018 < w.std() < 0.022 and abs(w.mean()) < 0.002
    assert model.stages[0].blocks[0].pwconv1.bias.abs().sum() == 0
    assert model.head.fc.weight.std() < ref.head.fc.weight.std() / 100


def test_list_models_has_family_isotropic_and_roadmap():
    names = convnext.list_models()
    for n in ["convnext_tiny", "convnext_xlarge", "convnext_atto", "convnext_isotropic_large", "resnet50",
              "roadmap_kernel11", "roadmap_separate_downsampling"]:
        assert n in names
    assert convnext.list_models("roadmap_kernel*") == [f"roadmap_kernel{k}" for k in (5, 7, 9, 11)]


def test_config_round_trips_through_dict():
    cfg = get_entry("roadmap_width96").config
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
