"""The paper's modernization roadmap (Fig. 2) as an ordered list of networks.

Each step applies one change to the previous step's ArchConfig, so a reader can diff any two
neighbours. Paper figures are ImageNet-1K top-1 at 224x224 and GFLOPs (= GMACs, as the paper counts).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ArchConfig


@dataclass(frozen=True)
class RoadmapStep:
    name: str
    change: str
    config: ArchConfig
    paper_top1: float
    paper_gflops: float
    # "original": ResNet-50's 90-epoch recipe; "modern": the ConvNeXt recipe (AdamW, 300 epochs, ...)
    recipe: str = "modern"
    # True where the paper gives the number only in a figure (read off to ~0.1)
    paper_top1_approx: bool = False


# torchvision's ResNet-50 (v1.5: stride on the 3x3 conv): 25,557,032 parameters.
RESNET50 = ArchConfig(
    depths=(3, 4, 6, 3),
    dims=(256, 512, 1024, 2048),
    mlp_ratio=0.25,
    layout="bottleneck",
    depthwise=False,
    kernel_size=3,
    stem="resnet",
    stem_dim=64,
    norm="batchnorm",
    norms="per_conv",
    activation="relu",
    activations="per_conv",
    conv_bias=False,
    downsample="in_block",
    head_norm=False,
    layer_scale_init=None,
)


def _build_steps() -> list[RoadmapStep]:
    steps: list[RoadmapStep] = []

    def add(name, change, cfg, top1, gflops, **kw):
        steps.append(RoadmapStep(name, change, cfg, top1, gflops, **kw))
        return cfg

    c = add("resnet50", "ResNet-50, original 90-epoch recipe", RESNET50, 76.1, 4.1, recipe="original")
    # Layer scale is listed among the recipe's hyper-parameters (paper appendix A.1), so the
    # modern recipe switches it on: +15,104 parameters (one gamma per channel per block), no FLOPs.
    c = add("roadmap_modern_recipe", "modern training recipe (+ layer scale)", c.replace(layer_scale_init=1e-6), 78.8, 4.1)
    c = add("roadmap_stage_ratio", "blocks per stage 3,4,6,3 -> 3,3,9,3", c.replace(depths=(3, 3, 9, 3)), 79.4, 4.5)
    c = add("roadmap_patchify", "stem 7x7 s2 conv + maxpool -> 4x4 s4 patchify conv", c.replace(stem="patchify"), 79.5, 4.4)
    c = add("roadmap_depthwise", "3x3 conv -> depthwise 3x3 (ResNeXt), width 64", c.replace(depthwise=True), 78.3, 2.4)
    c = add(
        "roadmap_width96",
        "bottleneck width 64 -> 96 (as Swin-T)",
        c.replace(dims=(384, 768, 1536, 3072), stem_dim=96),
        80.5,
        5.3,
    )
    c = add(
        "roadmap_inverted",
        "inverted bottleneck: block dim 96, hidden 4x wider",
        c.replace(dims=(96, 192, 384, 768), mlp_ratio=4.0, stem_dim=None),
        80.6,
        4.6,
    )
    move_up = add("roadmap_move_up", "depthwise conv moved up, first in the block", c.replace(layout="dwconv_first"), 79.9, 4.1)
    add("roadmap_kernel5", "depthwise kernel 3 -> 5", move_up.replace(kernel_size=5), 80.4, 4.1, paper_top1_approx=True)
    c = add("roadmap_kernel7", "depthwise kernel 3 -> 7 (kept)", move_up.replace(kernel_size=7), 80.6, 4.2)
    add("roadmap_kernel9", "depthwise kernel 3 -> 9", move_up.replace(kernel_size=9), 80.6, 4.2, paper_top1_approx=True)
    add("roadmap_kernel11", "depthwise kernel 3 -> 11", move_up.replace(kernel_size=11), 80.6, 4.3, paper_top1_approx=True)
    c = add("roadmap_gelu", "ReLU -> GELU", c.replace(activation="gelu"), 80.6, 4.2)
    c = add("roadmap_fewer_activations", "one GELU per block, between the 1x1 convs", c.replace(activations="single"), 81.3, 4.2)
    c = add("roadmap_fewer_norms", "one norm per block, after the depthwise conv", c.replace(norms="single"), 81.4, 4.2)
    # BN folds a conv's bias away; with LN the convs get their bias back, as in released ConvNeXt.
    c = add("roadmap_layernorm", "BatchNorm -> LayerNorm", c.replace(norm="layernorm", conv_bias=True), 81.5, 4.2)
    add(
        "roadmap_separate_downsampling",
        "separate LN + 2x2 s2 downsampling layers, LN after stem and before the head (= ConvNeXt-T)",
        c.replace(downsample="separate", head_norm=True),
        82.0,
        4.5,
    )
    return steps


ROADMAP: tuple[RoadmapStep, ...] = tuple(_build_steps())


def roadmap_step(name: str) -> RoadmapStep:
    for step in ROADMAP:
        if step.name == name:
            return step
    raise KeyError(name)
