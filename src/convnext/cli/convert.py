"""`convnext convert`: rewrite ConvNeXt weights from one layout (official, timm, torchvision, hf, ours) to another."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..checkpoint import export_weights, load_model
from ..errors import UsageError
from ..weights import LAYOUTS, hf, read_weights
from ..weights.io import resolve_weights_path
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "convert",
        help=COMMANDS["convert"],
        formatter_class=formatter,
        description="Read ConvNeXt weights in any known layout (the layout is recognised from the keys) and "
        "write them in another. The file type follows DST's suffix: .safetensors, or .pth/.pt/.bin; "
        "with --to hf, a DST directory (or a path without suffix) becomes a Hugging Face model folder "
        "(model.safetensors, config.json, preprocessor_config.json) that transformers' from_pretrained loads. "
        "Pickle files are read with torch.load(weights_only=True) only. The written file is read back and "
        "checked tensor by tensor.",
    )
    p.add_argument("src", help="weights file (or a directory holding one)")
    p.add_argument("dst", help="output file: .safetensors, .pth, .pt or .bin (or a folder, with --to hf)")
    p.add_argument("--to", required=True, choices=LAYOUTS, help="layout to write")
    add_model_options(p, "architecture of SRC (e.g. convnext_tiny); needed unless SRC is a convnext checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    folder = args.to == "hf" and hf.is_folder_target(dst)
    written = dst / hf.WEIGHTS_NAME if folder else dst
    if written.exists() and not args.force:
        raise UsageError(f"{written} exists; pass --force to overwrite it or choose another path")
    if src.exists() and written.exists() and resolve_weights_path(src).resolve() == written.resolve():
        raise UsageError(f"{dst} is the source file; write the conversion to another path")
    layout_in = read_weights(src).layout
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = load_model(src, model_name=args.model, **arch_overrides(args))
    for w in caught:  # a converter must not quietly drop or invent weights
        raise UsageError(f"{src}: {w.message}; convert needs weights that fit --model exactly")
    export_weights(model, dst, layout=args.to, info=info)

    # Read the result back the way any user of the file would, and compare every tensor.
    back = read_weights(written)
    own = model.state_dict()
    if set(back.state) != set(own) or any(not torch.equal(back.state[k], own[k]) for k in own):
        raise RuntimeError(f"{dst}: read-back check failed, the written weights differ from {src}")
    params = sum(v.numel() for v in own.values())
    name = info.name or "model"
    print(f"{src} ({layout_in} layout, {name}, {len(own)} tensors, {params:,} values) -> "
          f"{dst} ({args.to} layout): read back, all tensors identical")
    if folder:
        print(f"{dst}: Hugging Face model folder ({hf.CONFIG_NAME}, {hf.PREPROCESSOR_NAME}); "
              f"load it with transformers' from_pretrained({str(dst)!r})")
    return 0
