"""Inference benchmark: our models (eager and optimize_for_inference) against timm/torchvision peers.

Every model is timed in the same process, interleaved: each timed repetition runs every model once, round
robin, so load from other processes on a shared machine hits all of them alike and the ratios stay fair.
Throughput uses the median time of a batch; batch-1 latency reports p50/p95 over the same repetitions.
Peak memory is what one forward needs: parameters and buffers plus the highest level of allocations during
the forward (CUDA: the allocator's peak; CPU: the profiler's allocation events).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..models import create_model
from ..runtime import autocast, resolve_device
from .fuse import cpu_bf16_slowdown, cpu_native_bf16, optimize_for_inference, resolve_precision
from .quantize import quantize
from .runtimes import RuntimeModel, onnxruntime_model, openvino_model

PEERS = ("timm_convnext_tiny", "tv_convnext_tiny", "tv_resnet50", "tv_swin_t")


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


# peer -> (package, builder); random weights: speed does not depend on the values
PEER_BUILDERS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "timm_convnext_tiny": ("timm", lambda: _timm("convnext_tiny")),
    "tv_convnext_tiny": ("torchvision", lambda: _torchvision("convnext_tiny")),
    "tv_resnet50": ("torchvision", lambda: _torchvision("resnet50")),
    "tv_swin_t": ("torchvision", lambda: _torchvision("swin_t")),
}


@dataclass
class Candidate:
    """One row of the benchmark: how to build the model and how to feed it."""

    name: str
    build: Callable[[], nn.Module]
    channels_last: bool = False
    # autocast precision ("fp32": none) for models that are not an InferenceModel (which handles precision itself)
    precision: str = "fp32"
    group: str = "ours"  # "ours" | "ablation" | "peer"
    note: str = ""
    module: nn.Module | None = field(default=None, repr=False)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peer_candidates(peers: tuple[str, ...], device: torch.device, precision: str) -> tuple[list[Candidate], list[str]]:
    """timm/torchvision models to compare with (skipped with a note when the package is missing).

    CNNs run channels_last, their best eager setting on CPU and GPU; timm's ConvNeXt also runs NCHW so that
    the faster of the two is the reference the ratios use.
    """
    out, skipped = [], []
    for peer in peers:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
        package, build = PEER_BUILDERS[peer]
        if not _installed(package):
            skipped.append(f"{peer}: {package} is not installed")
            continue
        if peer == "timm_convnext_tiny":
            out.append(Candidate("timm_convnext_tiny (channels_last)", build, True, precision, "peer"))
            out.append(Candidate("timm_convnext_tiny (NCHW)", build, False, precision, "peer"))
        else:
            # Swin is a transformer: its tensors are (N, H, W, C) already, memory format does not apply.
            swin = peer == "tv_swin_t"
            out.append(Candidate(f"{peer} ({'NCHW' if swin else 'channels_last'})", build, not swin, precision, "peer"))
    return out, skipped


def our_candidates(model_name: str, device: torch.device, precision: str, *, ablation: bool, compile: bool,
                   num_classes: int = 1000, int8_size: int | None = None) -> list[Candidate]:
    """Our model eager (the reference) and fast; with ablation, one row per optimisation added."""

    def base() -> nn.Module:
        torch.manual_seed(0)  # timing does not depend on the values; a fixed seed keeps runs reproducible
        return create_model(model_name, num_classes=num_classes).eval()

    def fast(**kw) -> Callable[[], nn.Module]:
        return lambda: optimize_for_inference(base(), precision=precision, device=device, **kw)

    rows = [Candidate(f"{model_name} eager (channels_last)", base, True, precision, "ours", "unmodified model")]
    if ablation:
        rows = [
            Candidate(f"{model_name} eager (NCHW)", base, False, precision, "ablation", "unmodified model, NCHW input"),
            rows[0],
            Candidate(f"{model_name} +fold", fast(fast_blocks=False), True, group="ablation",
                      note="LN affine/gamma/BN/head LN folded into convs, channels_last"),
            Candidate(f"{model_name} +fold +NHWC GEMM blocks", fast(onednn=False), True, group="ablation",
                      note="blocks as GEMMs on the NHWC view, separate GELU and residual add"),
        ]
    # InferenceModel rows convert inputs themselves; they get channels_last inputs like the peers do.
    rows.append(Candidate(f"{model_name} fast", fast(), True, note="optimize_for_inference(): folds, NHWC GEMM blocks, "
                          "oneDNN GELU/residual-fused GEMMs on CPU"))
    if compile:
        rows.append(Candidate(f"{model_name} fast +compile", fast(compile=True), True,
                              note="optimize_for_inference(compile=True): inductor with frozen weights"))
    if int8_size is not None:
        def int8() -> nn.Module:
            model = base()
            calibration = torch.randn(64, model.cfg.in_chans, int8_size, int8_size, generator=torch.Generator().manual_seed(1))
            return quantize(model, calibration)

        rows.append(Candidate(f"{model_name} int8", int8, True, group="ours",
                              note="convnext.quantize(): PT2E INT8 (x86 Inductor quantizer, stem/head float), "
                                   "compiled with inductor; calibrated on random images (speed only)"))
    return rows


def runtime_candidates(model_name: str, resolution: int, num_classes: int = 1000,
                       bf16: bool | None = None) -> tuple[list[Candidate], list[str]]:
    """Our model run by the deployers' runtimes: OpenVINO fp32, bf16 and INT8 (NNCF), onnxruntime fp32 and INT8, each
    where installed (skipped with a note otherwise). CPU only. ``bf16``: include OpenVINO's bf16 row (default: where
    the CPU has native bf16; elsewhere OpenVINO emulates it, ~25x slower than fp32)."""
    if bf16 is None:
        bf16 = cpu_native_bf16()[0]
    def base() -> nn.Module:
        torch.manual_seed(0)
        return create_model(model_name, num_classes=num_classes).eval()

    def example(model: nn.Module, n: int = 2) -> torch.Tensor:
        return torch.randn(n, model.cfg.in_chans, resolution, resolution, generator=torch.Generator().manual_seed(1))

    rows, skipped = [], []
    if _installed("openvino"):
        rows.append(Candidate(f"{model_name} openvino fp32", lambda: openvino_model(m := base(), example(m)),
                              group="peer", note="openvino.convert_model of our model, CPU plugin, f32 hint"))
        if bf16:
            rows.append(Candidate(f"{model_name} openvino bf16", lambda: openvino_model(m := base(), example(m), "bf16"),
                                  group="peer", note="the same IR, CPU plugin, bf16 hint"))
        else:
            skipped.append("openvino bf16: this CPU has no native bf16 (OpenVINO would emulate it, ~25x slower than "
                           "fp32); --precision bf16 adds the row anyway")
        if _installed("nncf"):
            rows.append(Candidate(
                f"{model_name} openvino int8", lambda: openvino_model(m := base(), example(m), calibration=example(m, 64)),
                group="peer", note="NNCF post-training INT8 of the OpenVINO model (64 random calibration images)"))
        else:
            skipped.append("openvino int8: nncf is not installed")
    else:
        skipped.append("openvino: not installed (pip install -e '.[deploy]')")
    if _installed("onnxruntime"):
        rows.append(Candidate(f"{model_name} onnxruntime fp32", lambda: onnxruntime_model(m := base(), example(m)),
                              group="peer", note="torch.onnx (dynamo) export of our model, onnxruntime CPU provider"))
        rows.append(Candidate(
            f"{model_name} onnxruntime int8",
            lambda: onnxruntime_model(m := base(), example(m), calibration=example(m, 64)), group="peer",
            note="onnxruntime static quantization (QDQ, per-channel INT8 weights; 64 random calibration images)"))
        skipped.append("onnxruntime bf16: ONNX's Conv takes no bf16, so its CPU provider has no bf16 ConvNeXt")
    else:
        skipped.append("onnxruntime: not installed (pip install -e '.[deploy]')")
    return rows, skipped


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(c: Candidate, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if c.channels_last else x


def _call(c: Candidate, x: torch.Tensor, device: torch.device) -> None:
    with autocast(device, c.precision):
        c.module(x)


def _param_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def peak_memory_mib(c: Candidate, x: torch.Tensor, device: torch.device) -> float:
    """Parameters + buffers + the peak of what one forward allocates on top, in MiB."""
    resident = _param_bytes(c.module)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _call(c, x, device)
        _sync(device)
        extra = torch.cuda.max_memory_allocated(device) - before
    else:
        from torch.profiler import ProfilerActivity, profile

        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _call(c, x, device)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        level = extra = 0
        for _, nbytes in events:
            level += nbytes
            extra = max(extra, level)
    return (resident + extra) / 2**20


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silence what C++ code writes to file descriptor 2: the profiler's tracer (kineto) logs an ``ERROR:`` line
    on machines without a GPU although CPU profiling works, and a benchmark's output should hold results."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(candidates: list[Candidate], batch_sizes: tuple[int, ...], resolution: int, device: torch.device,
            warmup: int, iters: int, memory: bool = True, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Time every candidate at every batch size, interleaved; one dict per (candidate, batch size)."""
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(batch)).to(device)
        inputs = [_prepare(c, x) for c in candidates]
        times: list[list[float]] = [[] for _ in candidates]
        with torch.inference_mode():
            for _ in range(warmup):
                for c, xi in zip(candidates, inputs):
                    _call(c, xi, device)
            for it in range(iters):
                if progress:
                    progress(f"batch {batch}: repetition {it + 1}/{iters}")
                for i, (c, xi) in enumerate(zip(candidates, inputs)):
                    _sync(device)
                    t0 = time.perf_counter()
                    _call(c, xi, device)
                    _sync(device)
                    times[i].append(time.perf_counter() - t0)
            for c, xi, ts in zip(candidates, inputs, times):
                med = statistics.median(ts)
                row = {
                    "model": c.name, "group": c.group, "batch": batch, "resolution": resolution,
                    "throughput_img_s": batch / med, "median_ms": med * 1e3,
                    "mean_ms": statistics.fmean(ts) * 1e3, "min_ms": min(ts) * 1e3,
                    "p50_ms": _percentile(ts, 0.5) * 1e3, "p95_ms": _percentile(ts, 0.95) * 1e3,
                    "times_ms": [round(t * 1e3, 3) for t in ts],
                }
                # a runtime's allocations happen outside PyTorch, where the profiler cannot see them
                if memory and not isinstance(c.module, RuntimeModel):
                    row["peak_mem_mib"] = peak_memory_mib(c, xi, device)
                rows.append(row)
    return rows


def _reference(rows: list[dict], batch: int) -> dict | None:
    """timm's best eager setting at this batch size (the faster of channels_last and NCHW)."""
    timm = [r for r in rows if r["batch"] == batch and r["model"].startswith("timm_convnext_tiny")]
    return max(timm, key=lambda r: r["throughput_img_s"]) if timm else None


def add_ratios(rows: list[dict]) -> None:
    for r in rows:
        ref = _reference(rows, r["batch"])
        if ref is not None:
            r["vs_timm_throughput"] = r["throughput_img_s"] / ref["throughput_img_s"]
            r["vs_timm_p50"] = r["p50_ms"] / ref["p50_ms"]
            r["timm_reference"] = ref["model"]


def _program() -> str:
    name = os.path.basename(sys.argv[0])
    return "convnext" if name in ("__main__.py", "convnext") else name


def precision_note(precision: str, device: torch.device) -> str:
    if device.type != "cpu":
        return f"{precision} on {device.type} (AMP autocast for every model)" if precision != "fp32" else "fp32"
    slowdown = cpu_bf16_slowdown()
    cap = torch.backends.cpu.get_cpu_capability()
    native, why = cpu_native_bf16()
    return (f"CPU {cap}: {why}; bf16 GEMM {slowdown:.2f}x the time of fp32; auto picks "
            f"{'bf16' if native else 'fp32'}; running {precision}")


def run_benchmark(model: str = "convnext_tiny", *, batch_sizes: tuple[int, ...] = (1, 8), resolution: int = 224,
                  device: str = "cpu", precision: str = "auto", warmup: int = 3, iters: int = 20,
                  peers: tuple[str, ...] = PEERS, ablation: bool = False, compile: bool = False,
                  memory: bool = True, threads: int | None = None, num_classes: int = 1000,
                  int8: bool = False, runtimes: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Build every candidate, measure them interleaved, return the results as a JSON-ready dict."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes {batch_sizes} must be positive integers, e.g. --batch-sizes 1 8")
    if resolution < 32:
        raise ValueError(f"resolution {resolution} is below the models' total stride 32; use --size 32 or more")
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1 (got warmup={warmup}, iters={iters})")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads} must be >= 1 (leave it out for torch's default)")
    if str(device) not in ("cpu", "auto") and not str(device).startswith("cuda"):
        raise ValueError(f"--device {device!r} is not valid; use cpu, cuda or cuda:N")
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if (int8 or runtimes) and dev.type != "cpu":
        raise ValueError("--int8 and --runtimes run on the CPU; drop them or use --device cpu")
    precision = resolve_precision(precision, dev)
    peer_rows, skipped = peer_candidates(tuple(peers), dev, precision)
    candidates = our_candidates(model, dev, precision, ablation=ablation, compile=compile, num_classes=num_classes,
                                int8_size=resolution if int8 else None) + peer_rows
    if runtimes:
        runtime_rows, runtime_skipped = runtime_candidates(model, resolution, num_classes,
                                                           bf16=True if precision == "bf16" else None)
        candidates += runtime_rows
        skipped += runtime_skipped
    load_before = os.getloadavg()
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built: dict[int, nn.Module] = {}
        for c in candidates:
            # the same builder twice (timm NCHW and channels_last): copy instead of a second slow random init
            if id(c.build) not in built:
                built[id(c.build)] = c.build()
                c.module = built[id(c.build)]
            else:
                c.module = copy.deepcopy(built[id(c.build)])
            c.module = c.module.eval().to(dev)
            if c.channels_last:
                c.module = c.module.to(memory_format=torch.channels_last)
        rows = measure(candidates, tuple(batch_sizes), resolution, dev, warmup, iters, memory, progress)
    add_ratios(rows)
    notes = {c.name: c.note for c in candidates if c.note}
    return {
        "command": " ".join(shlex.quote(a) for a in [_program()] + sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "precision": precision, "precision_note": precision_note(precision, dev),
        "batch_sizes": list(batch_sizes), "resolution": resolution, "warmup": warmup, "iters": iters,
        "method": "interleaved round robin: every timed repetition runs each model once; throughput = batch / "
                  "median batch time; latency p50/p95 over the repetitions",
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "seconds": round(time.time() - started, 1),
        "skipped": skipped, "notes": notes,
        "warnings": sorted({str(w.message) for w in caught}),
        "results": rows,
    }


def format_table(result: dict) -> str:
    """Human-readable table: one line per model and batch size, ratios against timm's best eager setting."""
    lines = [
        f"{result['model']} on {result['device']} ({result['device_name']}, {result['threads']} threads), "
        f"{result['resolution']}x{result['resolution']}, {result['precision']}, "
        f"warmup {result['warmup']}, {result['iters']} interleaved repetitions",
        f"precision: {result['precision_note']}",
        f"load average before/after: {' '.join(f'{v:.2f}' for v in result['loadavg_before'])} / "
        f"{' '.join(f'{v:.2f}' for v in result['loadavg_after'])}",
    ]
    has_mem = any("peak_mem_mib" in r for r in result["results"])
    header = f"{'model':44s} {'batch':>5s} {'img/s':>8s} {'p50 ms':>9s} {'p95 ms':>9s}" + \
             (f" {'peak MiB':>9s}" if has_mem else "") + f" {'vs timm':>8s}"
    for batch in result["batch_sizes"]:
        lines += ["", header, "-" * len(header)]
        for r in (r for r in result["results"] if r["batch"] == batch):
            ratio = f"{r['vs_timm_throughput']:.2f}x" if "vs_timm_throughput" in r else "-"
            lines.append(f"{r['model'][:44]:44s} {r['batch']:5d} {r['throughput_img_s']:8.1f} {r['p50_ms']:9.2f} "
                         f"{r['p95_ms']:9.2f}" + (f" {r['peak_mem_mib']:9.1f}" if "peak_mem_mib" in r else f" {'-':>9s}" if has_mem else "") + f" {ratio:>8s}")
    ref = [r for r in result["results"] if r.get("timm_reference") == r["model"]]
    if ref:
        lines += ["", "vs timm: throughput relative to timm convnext_tiny in its faster eager setting "
                      f"({', '.join(sorted({r['model'] for r in ref}))})"]
    for s in result["skipped"]:
        lines.append(f"skipped {s}")
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = ["PEERS", "Candidate", "format_table", "measure", "our_candidates", "peak_memory_mib",
           "peer_candidates", "precision_note", "run_benchmark"]
