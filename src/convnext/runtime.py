"""Where and in what precision a model runs: the one device resolver and the one autocast helper, shared by
training, evaluation and inference."""

from __future__ import annotations

import contextlib

import torch

from .errors import UsageError

# "none" (training's --runtime.amp) and "fp32" (inference's --precision) both mean: no autocast.
DTYPES = {"none": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str):
    """``torch.autocast`` in ``precision`` ("bf16"/"fp16") on ``device``; a no-op for "none"/"fp32"."""
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_device(device: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """"auto" (or None): this process's GPU (``cuda:local_rank`` under torchrun) if CUDA is available, else the
    CPU; "cuda" without an index means ``cuda:local_rank``. Asking for CUDA where there is none, or for a GPU
    index this machine does not have (torchrun with more processes than GPUs), is a UsageError."""
    if device is None or str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} requested but no CUDA device is available; use device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index >= count:
            if device.index == local_rank and local_rank > 0:
                raise UsageError(f"this process is torchrun's local rank {local_rank} but the machine has {count} "
                                 f"GPU(s): use --nproc_per_node {count} or fewer (or runtime.device cpu)")
            raise UsageError(f"{device} does not exist: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return device


__all__ = ["DTYPES", "autocast", "resolve_device"]
