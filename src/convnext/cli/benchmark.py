"""`convnext benchmark`: inference throughput, latency and memory of our model against timm/torchvision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import atomic_write, check_output_path
from ..infer.benchmark import PEERS, format_table, run_benchmark
from . import COMMANDS


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "benchmark",
        help=COMMANDS["benchmark"],
        formatter_class=formatter,
        description="Throughput (img/s), batch-1 latency p50/p95 and peak memory for our model, eager and "
                    "fast (optimize_for_inference), and for timm convnext_tiny, torchvision convnext_tiny, "
                    "resnet50 and swin_t where installed; all measured interleaved in one process.",
    )
    p.add_argument("model", nargs="?", default="convnext_tiny", help="registered model name (convnext list)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N", help="batch sizes to time")
    p.add_argument("--size", type=int, default=224, help="input resolution")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: on CPU bf16 where it has native bf16 (AVX512-BF16/AMX), else fp32; bf16/fp16 AMP on CUDA")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per model before timing")
    p.add_argument("--iters", type=int, default=20, help="timed repetitions (each runs every model once)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS), metavar="PEER",
                   help=f"models to compare with ({', '.join(PEERS)}); give none for just ours")
    p.add_argument("--ablation", action="store_true", help="add one row per optimisation (what each contributes)")
    p.add_argument("--compile", action="store_true", help="add a row with torch.compile (inductor, frozen weights)")
    p.add_argument("--int8", action="store_true",
                   help="add our INT8 model (convnext.quantize, PT2E; CPU; needs torchao: pip install -e '.[deploy]')")
    p.add_argument("--runtimes", action="store_true",
                   help="add our model run by OpenVINO (fp32, and INT8 via NNCF) and onnxruntime (fp32 and static INT8), "
                        "where installed")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--output", "-o", default=None, help="also write the JSON results to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.output:
        check_output_path(args.output)
    result = run_benchmark(
        args.model, batch_sizes=tuple(args.batch_sizes), resolution=args.size, device=args.device,
        precision=args.precision, warmup=args.warmup, iters=args.iters, peers=tuple(args.peers),
        ablation=args.ablation, compile=args.compile, memory=not args.no_memory, threads=args.threads, int8=args.int8,
        runtimes=args.runtimes,
        progress=lambda msg: print(f"\r{msg}   ", end="", file=sys.stderr, flush=True) if sys.stderr.isatty() else None,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.output:
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(text if args.json else format_table(result))
    return 0
