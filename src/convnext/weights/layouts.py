"""State-dict layouts of the public ConvNeXt implementations and the renaming to and from ours.

All five layouts hold the same numbers (see FACTS.md, "State-dict formats"); converting is renaming
plus two reshapes: the 1x1 "pwconv" layers are Linear (O, I) elsewhere and Conv2d (O, I, 1, 1) here
(the same matrix), and torchvision stores layer scale as (C, 1, 1) where we store ``gamma`` as (C,).

A layout is a list of ``Rule``s, each a pair of key templates ("theirs", "ours") with the fields
``{s}`` (stage), ``{b}`` (block), ``{i}`` (feature index), ``{m}`` (a block member) and ``{t}``
(``weight``/``bias``). The same rules run in both directions, so import and export cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

LAYOUTS = ("ours", "official", "timm", "torchvision", "hf")

_FIELD_PATTERNS = {"s": r"\d+", "b": r"\d+", "i": r"\d+", "f": r"\d+", "t": r"weight|bias", "m": r"[a-z_0-9]+"}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    regex = "".join(
        re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELD_PATTERNS[p]})" for n, p in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


@dataclass
class Rule:
    theirs: str
    ours: str
    # Field arithmetic where the two sides number things differently (torchvision's features.N).
    to_ours: Callable[[dict], dict] = lambda f: f
    to_theirs: Callable[[dict], dict] = lambda f: f
    # Block members named differently on the two sides: {theirs name: our name}.
    members: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._theirs_re, self._ours_re = _compile(self.theirs), _compile(self.ours)

    def forward(self, key: str) -> str | None:
        m = self._theirs_re.match(key)
        if m is None:
            return None
        fields = self.to_ours(m.groupdict())
        if "m" in fields:
            if fields["m"] not in self.members:
                return None
            fields["m"] = self.members[fields["m"]]
        return self.ours.format(**fields)

    def backward(self, key: str) -> str | None:
        m = self._ours_re.match(key)
        if m is None:
            return None
        fields = self.to_theirs(m.groupdict())
        if "m" in fields:
            reverse = {v: k for k, v in self.members.items()}
            if fields["m"] not in reverse:
                return None
            fields["m"] = reverse[fields["m"]]
        return self.theirs.format(**fields)


_OFFICIAL_BLOCK = {n: n for n in ("dwconv", "norm", "pwconv1", "pwconv2")}

OFFICIAL = [
    Rule("downsample_layers.0.0.{t}", "stem.conv.{t}"),
    Rule("downsample_layers.0.1.{t}", "stem.norm.{t}"),
    Rule("downsample_layers.{s}.0.{t}", "stages.{s}.downsample.norm.{t}"),
    Rule("downsample_layers.{s}.1.{t}", "stages.{s}.downsample.conv.{t}"),
    Rule("stages.{s}.{b}.gamma", "stages.{s}.blocks.{b}.gamma"),
    Rule("stages.{s}.{b}.{m}.{t}", "stages.{s}.blocks.{b}.{m}.{t}", members=_OFFICIAL_BLOCK),
    Rule("norm.{t}", "head.norm.{t}"),
    Rule("head.{t}", "head.fc.{t}"),
    # the official detection/segmentation backbones: one LayerNorm per output, norm0..norm3
    Rule("norm{i}.{t}", "feature_norms.{i}.{t}"),
]

# Official isotropic ConvNeXt: a 16x16 patchify stem without norm, then one run of blocks.
OFFICIAL_ISOTROPIC = [
    Rule("stem.{t}", "stem.conv.{t}"),
    Rule("blocks.{b}.gamma", "stages.0.blocks.{b}.gamma"),
    Rule("blocks.{b}.{m}.{t}", "stages.0.blocks.{b}.{m}.{t}", members=_OFFICIAL_BLOCK),
    Rule("norm.{t}", "head.norm.{t}"),
    Rule("head.{t}", "head.fc.{t}"),
]

TIMM = [
    Rule("stem.0.{t}", "stem.conv.{t}"),
    Rule("stem.1.{t}", "stem.norm.{t}"),
    Rule("stages.{s}.downsample.0.{t}", "stages.{s}.downsample.norm.{t}"),
    Rule("stages.{s}.downsample.1.{t}", "stages.{s}.downsample.conv.{t}"),
    Rule("stages.{s}.blocks.{b}.gamma", "stages.{s}.blocks.{b}.gamma"),
    Rule("stages.{s}.blocks.{b}.{m}.{t}", "stages.{s}.blocks.{b}.{m}.{t}",
         members={"conv_dw": "dwconv", "norm": "norm"}),
    Rule("stages.{s}.blocks.{b}.mlp.fc1.{t}", "stages.{s}.blocks.{b}.pwconv1.{t}"),
    Rule("stages.{s}.blocks.{b}.mlp.fc2.{t}", "stages.{s}.blocks.{b}.pwconv2.{t}"),
    Rule("head.norm.{t}", "head.norm.{t}"),
    Rule("head.fc.{t}", "head.fc.{t}"),
]


# torchvision numbers stages and downsampling layers together: features.0 stem, features.1 stage 0,
# features.2 downsample into stage 1, features.3 stage 1, ...
def _tv_stage(f: dict) -> dict:
    return {**f, "s": str((int(f.pop("f")) - 1) // 2)}


def _tv_downsample(f: dict) -> dict:
    return {**f, "s": str(int(f.pop("f")) // 2)}


def _tv_stage_back(f: dict) -> dict:
    return {**f, "f": str(2 * int(f.pop("s")) + 1)}


def _tv_downsample_back(f: dict) -> dict:
    return {**f, "f": str(2 * int(f.pop("s")))}


TORCHVISION = [
    Rule("features.0.0.{t}", "stem.conv.{t}"),
    Rule("features.0.1.{t}", "stem.norm.{t}"),
    Rule("features.{f}.{b}.layer_scale", "stages.{s}.blocks.{b}.gamma", _tv_stage, _tv_stage_back),
    Rule("features.{f}.0.{t}", "stages.{s}.downsample.norm.{t}", _tv_downsample, _tv_downsample_back),
    Rule("features.{f}.1.{t}", "stages.{s}.downsample.conv.{t}", _tv_downsample, _tv_downsample_back),
    Rule("features.{f}.{b}.block.{m}.{t}", "stages.{s}.blocks.{b}.{m}.{t}", _tv_stage, _tv_stage_back,
         members={"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}),
    Rule("classifier.0.{t}", "head.norm.{t}"),
    Rule("classifier.2.{t}", "head.fc.{t}"),
]


def _hf_stage(f: dict) -> dict:
    return {**f, "i": str(int(f["i"]) - 1)}


def _hf_stage_back(f: dict) -> dict:
    return {**f, "i": str(int(f["i"]) + 1)}


# Keys of transformers' ConvNextModel / ConvNextBackbone; ConvNextForImageClassification prefixes
# the body with "convnext." (handled in to_ours/from_ours) and adds "classifier".
HF = [
    Rule("embeddings.patch_embeddings.{t}", "stem.conv.{t}"),
    Rule("embeddings.layernorm.{t}", "stem.norm.{t}"),
    Rule("encoder.stages.{s}.downsampling_layer.0.{t}", "stages.{s}.downsample.norm.{t}"),
    Rule("encoder.stages.{s}.downsampling_layer.1.{t}", "stages.{s}.downsample.conv.{t}"),
    Rule("encoder.stages.{s}.layers.{b}.layer_scale_parameter", "stages.{s}.blocks.{b}.gamma"),
    Rule("encoder.stages.{s}.layers.{b}.{m}.{t}", "stages.{s}.blocks.{b}.{m}.{t}",
         members={"dwconv": "dwconv", "layernorm": "norm", "pwconv1": "pwconv1", "pwconv2": "pwconv2"}),
    Rule("layernorm.{t}", "head.norm.{t}"),
    Rule("classifier.{t}", "head.fc.{t}"),
    Rule("hidden_states_norms.stage{i}.{t}", "feature_norms.{i}.{t}", _hf_stage, _hf_stage_back),
]
_HF_PREFIX = "convnext."

_RULES = {"official": OFFICIAL, "timm": TIMM, "torchvision": TORCHVISION, "hf": HF}

# Keys that only one layout has, used to recognise a state dict.
_SIGNATURES = [
    ("ours", ("stem.conv.weight",)),
    ("official", ("downsample_layers.0.0.weight", "blocks.0.dwconv.weight")),
    ("timm", ("stem.0.weight",)),
    ("torchvision", ("features.0.0.weight",)),
    ("hf", ("embeddings.patch_embeddings.weight", _HF_PREFIX + "embeddings.patch_embeddings.weight")),
]


class LayoutError(ValueError):
    """A state dict that cannot be mapped between layouts; the message names the keys."""


def detect_layout(keys: Iterable[str]) -> str | None:
    """Which layout a state dict is in, from keys only one layout has; None if none matches."""
    keys = set(keys)
    for layout, signature in _SIGNATURES:
        if any(k in keys for k in signature):
            return layout
    return None


def _is_isotropic_official(keys: set[str]) -> bool:
    return "blocks.0.dwconv.weight" in keys and "downsample_layers.0.0.weight" not in keys


def _rules_for(layout: str, keys: set[str], ours: bool) -> list[Rule]:
    if layout == "official":
        isotropic = ("stages.1.blocks.0.dwconv.weight" not in keys and "stem.norm.weight" not in keys) if ours \
            else _is_isotropic_official(keys)
        return OFFICIAL_ISOTROPIC if isotropic else OFFICIAL
    try:
        return _RULES[layout]
    except KeyError:
        raise LayoutError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}") from None


def to_ours(state: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and reshape) a state dict from ``layout`` to ours. Returns (state, keys no rule maps)."""
    if layout == "ours":
        return dict(state), []
    keys = set(state)
    if layout == "hf" and any(k.startswith(_HF_PREFIX) for k in keys):
        # ConvNextForImageClassification: body under "convnext.", head "classifier" at top level
        state = {k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k: v for k, v in state.items()}
    rules = _rules_for(layout, set(state), ours=False)
    out, unmapped = {}, []
    for key, value in state.items():
        new = next((n for n in (r.forward(key) for r in rules) if n is not None), None)
        if new is None:
            unmapped.append(key)
            continue
        if new.endswith(("pwconv1.weight", "pwconv2.weight")) and value.ndim == 2:
            value = value[:, :, None, None]  # Linear (O, I) -> 1x1 conv (O, I, 1, 1): the same matrix
        elif new.endswith(".gamma") and value.ndim > 1:
            value = value.reshape(-1)  # torchvision layer_scale (C, 1, 1)
        out[new] = value
    return out, unmapped


def from_ours(state: dict[str, torch.Tensor], layout: str, conv_mlp: bool = False) -> dict[str, torch.Tensor]:
    """Rename (and reshape) our state dict into ``layout``.

    ``conv_mlp``: timm only; keep pwconv weights as 1x1 convs, as timm's atto/femto/pico/nano do.
    Raises LayoutError naming our keys that have no place in the layout (e.g. a ResNet-style roadmap
    step, or a backbone's feature norms in a layout without them).
    """
    if layout == "ours":
        return dict(state)
    rules = _rules_for(layout, set(state), ours=True)
    out, unmapped = {}, []
    for key, value in state.items():
        new = next((n for n in (r.backward(key) for r in rules) if n is not None), None)
        if new is None:
            unmapped.append(key)
            continue
        if key.endswith(("pwconv1.weight", "pwconv2.weight")) and not (layout == "timm" and conv_mlp):
            value = value.reshape(value.shape[0], value.shape[1])
        elif key.endswith(".gamma") and layout == "torchvision":
            value = value.reshape(-1, 1, 1)
        out[new] = value
    if unmapped:
        raise LayoutError(
            f"{len(unmapped)} weight(s) have no place in the {layout} layout (first: {', '.join(unmapped[:3])}); "
            f"the {layout} layout holds the ConvNeXt family only, so export this model with layout 'ours'"
        )
    if layout == "hf":
        # a classifier goes out as ConvNextForImageClassification, a backbone as ConvNextBackbone
        if "classifier.weight" in out:
            out = {k if k.startswith("classifier.") else _HF_PREFIX + k: v for k, v in out.items()}
    return out


__all__ = ["LAYOUTS", "LayoutError", "Rule", "detect_layout", "from_ours", "to_ours"]
