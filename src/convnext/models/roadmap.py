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
    # The step this one changes (its config is the parent's plus `change`); None for ResNet-50.
    parent: str | None = None
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
    steps: dict[str, RoadmapStep] = {}

    def add(name, change, parent, top1, gflops, recipe="modern", paper_top1_approx=False, **changes):
        config = (RESNET50 if parent is None else steps[parent].config).replace(**changes)
        steps[name] = RoadmapStep(name, change, config, top1, gflops, parent, recipe, paper_top1_approx)

    add("resnet50", "ResNet-50, original 90-epoch recipe", None, 76.1, 4.1, recipe="original")
    # Layer scale is listed among the recipe's hyper-parameters (paper appendix A.1), so the
    # modern recipe switches it on: +15,104 parameters (one gamma per channel per block), no FLOPs.
    add("roadmap_modern_recipe", "modern training recipe (+ layer scale)", "resnet50", 78.8, 4.1,
        layer_scale_init=1e-6)
    add("roadmap_stage_ratio", "blocks per stage 3,4,6,3 -> 3,3,9,3", "roadmap_modern_recipe", 79.4, 4.5,
        depths=(3, 3, 9, 3))
    add("roadmap_patchify", "stem 7x7 s2 conv + maxpool -> 4x4 s4 patchify conv", "roadmap_stage_ratio", 79.5, 4.4,
        stem="patchify")
    add("roadmap_depthwise", "3x3 conv -> depthwise 3x3 (ResNeXt), width 64", "roadmap_patchify", 78.3, 2.4,
        depthwise=True)
    add("roadmap_width96", "bottleneck width 64 -> 96 (as Swin-T)", "roadmap_depthwise", 80.5, 5.3,
        dims=(384, 768, 1536, 3072), stem_dim=96)
    add("roadmap_inverted", "inverted bottleneck: block dim 96, hidden 4x wider", "roadmap_width96", 80.6, 4.6,
        dims=(96, 192, 384, 768), mlp_ratio=4.0, stem_dim=None)
    add("roadmap_move_up", "depthwise conv moved up, first in the block", "roadmap_inverted", 79.9, 4.1,
        layout="dwconv_first")
    # The kernel sizes are each tried from the move-up step (kernel 3); the paper keeps 7.
    add("roadmap_kernel5", "depthwise kernel 3 -> 5", "roadmap_move_up", 80.4, 4.1, paper_top1_approx=True,
        kernel_size=5)
    add("roadmap_kernel7", "depthwise kernel 3 -> 7 (kept)", "roadmap_move_up", 80.6, 4.2, kernel_size=7)
    add("roadmap_kernel9", "depthwise kernel 3 -> 9", "roadmap_move_up", 80.6, 4.2, paper_top1_approx=True,
        kernel_size=9)
    add("roadmap_kernel11", "depthwise kernel 3 -> 11", "roadmap_move_up", 80.6, 4.3, paper_top1_approx=True,
        kernel_size=11)
    add("roadmap_gelu", "ReLU -> GELU", "roadmap_kernel7", 80.6, 4.2, activation="gelu")
    add("roadmap_fewer_activations", "one GELU per block, between the 1x1 convs", "roadmap_gelu", 81.3, 4.2,
        activations="single")
    add("roadmap_fewer_norms", "one norm per block, after the depthwise conv", "roadmap_fewer_activations", 81.4, 4.2,
        norms="single")
    # BN folds a conv's bias away; with LN the convs get their bias back, as in released ConvNeXt.
    add("roadmap_layernorm", "BatchNorm -> LayerNorm", "roadmap_fewer_norms", 81.5, 4.2, norm="layernorm",
        conv_bias=True)
    add("roadmap_separate_downsampling",
        "separate LN + 2x2 s2 downsampling layers, LN after stem and before the head (= ConvNeXt-T)",
        "roadmap_layernorm", 82.0, 4.5, downsample="separate", head_norm=True)
    return list(steps.values())


ROADMAP: tuple[RoadmapStep, ...] = tuple(_build_steps())


def roadmap_step(name: str) -> RoadmapStep:
    for step in ROADMAP:
        if step.name == name:
            return step
    raise KeyError(name)
