"""`convnext quantize CHECKPOINT --calibration DATA -o OUT`: INT8 post-training quantization (PT2E, x86)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..files import check_output_path
from ..infer.quantize import KEEP_FLOAT, quantize_checkpoint
from .options import add_model_options, arch_overrides
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "quantize", help=COMMANDS["quantize"], formatter_class=formatter,
        description="Quantize a float checkpoint to INT8 (PyTorch PT2E with the x86 Inductor quantizer, from "
                    "torchao: pip install -e '.[deploy]'). Activation ranges come from calibration images, "
                    "preprocessed with the checkpoint's own preprocessing. The stem and the head stay float by "
                    "default. The INT8 file runs in predict and eval (CPU); measure its accuracy with convnext eval on "
                    "held-out data, and its speed with convnext benchmark MODEL --int8.",
        epilog="example: convnext quantize runs/demo-fashion-mnist --calibration fashion_mnist -o demo-int8.safetensors",
    )
    p.add_argument("checkpoint", help="float checkpoint .safetensors file or run directory")
    p.add_argument("--calibration", required=True, metavar="DATA",
                   help="image folder or files like the model's inputs, or a dataset name (its training split)")
    p.add_argument("--data-root", default=None, help="where a named dataset lives (default: its usual place)")
    p.add_argument("--images", type=int, default=512, help="calibration images to use (a fixed shuffle picks them)")
    p.add_argument("--keep-float", default=",".join(KEEP_FLOAT), metavar="NAMES",
                   help="comma-separated submodules left in floating point ('' quantizes every conv and linear)")
    p.add_argument("-o", "--output", required=True, help="INT8 model file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    output = check_output_path(args.output)
    if output.exists() and not args.force:
        raise UsageError(f"{output} exists; pass --force to overwrite it or choose another path with -o")
    keep = tuple(n.strip() for n in args.keep_float.split(",") if n.strip())
    r = quantize_checkpoint(args.checkpoint, args.calibration, output, images=args.images, keep_float=keep,
                            data_root=args.data_root, model_name=args.model, arch=arch_overrides(args))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"wrote {r['path']} (INT8, {r['size_bytes'] / 1e6:.2f} MB; float: {', '.join(r['keep_float']) or 'none'})")
    print(f"  calibrated on {r['calibration_images']} images; on them INT8 and fp32 agree on top-1 for "
          f"{r['top1_agreement']:.2f}% (max abs logit diff {r['max_abs_logit_diff']:.3g})")
    if not r["compiled"]:
        print("  note: torch.compile is unavailable here, so the INT8 model ran its slow reference ops")
    print(f"  accuracy on held-out data: convnext eval {r['path']}")
    return 0
