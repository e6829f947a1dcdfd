"""`convnext export CHECKPOINT --format onnx|torchscript|torch-export`: export, then verify against PyTorch."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import UsageError
from ..files import check_output_path
from ..weights.io import resolve_weights_path
from ..infer.export import EXPORT_PRECISIONS, FORMATS, TOLERANCES, default_output, export_checkpoint
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"],
        formatter_class=formatter,
        description="Export a checkpoint and check the exported file right away: it is loaded by its runtime "
                    "(onnxruntime, torch.jit, torch.export, OpenVINO's CPU plugin in fp32; openvino writes "
                    "NAME.xml and NAME.bin) and compared with PyTorch at two batch sizes. The "
                    "file is written only if the max abs difference is within --tolerance. Class names and "
                    "preprocessing are stored inside the file (ONNX metadata_props / extra file convnext.json).",
        epilog="example: convnext export runs/fmnist/model.safetensors --format onnx --dynamic-hw -o model.onnx",
    )
    p.add_argument("checkpoint", help="checkpoint .safetensors file or run directory (model, best or last .safetensors)")
    p.add_argument("-f", "--format", choices=FORMATS, default="onnx", help="export format")
    p.add_argument("-o", "--output", default=None,
                   help="output file (default: next to the checkpoint, .onnx / .pt / .pt2)")
    p.add_argument("--dynamic-hw", action="store_true",
                   help="also make height and width dynamic (from 2x the total stride up; verified at a second size)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="what the file stores and computes in: fp16/bf16 cast the weights (inputs and logits stay fp32; "
                        "onnx: fp32/fp16; openvino: fp16 stores fp16 weights, the runtime picks its precision)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max abs logit difference allowed, against PyTorch in the same precision (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()) + ")")
    p.add_argument("--fast", action="store_true", help="export the fused inference model (convnext.infer.fuse)")
    add_model_options(p)
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise ValueError(f"--tolerance {args.tolerance} must be a finite number > 0 (it decides whether the "
                         "export is verified)")
    output = Path(args.output) if args.output is not None else default_output(args.checkpoint, args.format)
    source = resolve_weights_path(args.checkpoint)
    if output.exists() and output.resolve() == source.resolve():
        raise UsageError(f"-o {output} is the checkpoint being exported; write the export to another file")
    check_output_path(output)
    if output.exists() and not args.force:
        raise UsageError(f"{output} exists; pass --force to overwrite it or choose another path with -o")
    result = export_checkpoint(args.checkpoint, output, args.format, fast=args.fast, model_name=args.model,
                               arch=arch_overrides(args), dynamic_hw=args.dynamic_hw, opset=args.opset, tolerance=args.tolerance,
                               precision=args.precision)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    size_mb = result.path.stat().st_size / 1e6
    if args.format == "openvino":  # the IR's weights are in the .bin next to the .xml
        size_mb += result.path.with_suffix(".bin").stat().st_size / 1e6
    print(f"wrote {result.path} ({args.format}, {args.precision}, {size_mb:.1f} MB)")
    for c in result.checks:
        print(f"  verified batch {c.batch} at {c.height}x{c.width}: max abs diff {c.max_abs_diff:.2e}")
    if result.fused_vs_original is not None:
        print(f"  fused vs original model: max abs diff {result.fused_vs_original:.2e}")
    if result.fp32_vs_reduced is not None:
        print(f"  {args.precision} vs fp32 model in PyTorch: max abs diff {result.fp32_vs_reduced:.2e}")
    print(f"max abs diff {result.max_abs_diff:.2e} <= tolerance {result.tolerance:g}: OK")
    return 0
