"""torchrun support: process-group setup, per-rank sharding, metric all-reduce.

``torchrun --nproc_per_node N -m convnext train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we pick
NCCL with one GPU per process when CUDA is available and gloo on CPU. Without those variables
everything runs as a single process (rank 0 of 1) and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over ranks with ``op`` ("sum" or "max"), in its dtype, on the CPU (``t`` for one process)."""
    if not info.enabled:
        return t
    t = t.to(info.device)  # NCCL reduces only CUDA tensors; gloo takes CPU tensors
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.cpu()


def all_reduce_sum(values: list[float] | torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a vector of float64 values over ranks (identity for one process), on the CPU."""
    return all_reduce(torch.as_tensor(values, dtype=torch.float64), info, "sum")


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj, info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` for one process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` under DistributedDataParallel when several processes train it; ``model`` itself otherwise."""
    if not info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ShardedSampler(torch.utils.data.Sampler):
    """Indices of one rank for one epoch, each paired with its augmentation seed.

    Train (``shuffle=True``): a permutation fixed by (seed, epoch), padded by wrapping so every rank
    gets the same count, split round-robin; ``start`` skips samples already consumed (resume).
    Eval (``shuffle=False``): rank r takes r, r + world, ...; no padding, so every sample is counted
    exactly once over all ranks.
    ``order(epoch, generator) -> size indices`` replaces the train permutation (data pruning: ``pruning.py``);
    it draws from the epoch's generator, so every rank builds the same global order.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, start: int = 0, drop_last_batch: int = 0, order=None) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch, self.start = shuffle, seed, epoch, start
        self.drop_last_batch, self.order = drop_last_batch, order

    def indices(self) -> list[int]:
        """This rank's whole epoch (``start`` not applied): position p holds the global order's p * world + rank."""
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self.order(self.epoch, g) if self.order is not None else torch.randperm(self.size, generator=g).tolist()
        total = -(-self.size // self.world_size) * self.world_size
        order += order[: total - self.size]
        mine = order[self.rank :: self.world_size]
        if self.drop_last_batch:
            mine = mine[: len(mine) // self.drop_last_batch * self.drop_last_batch]
        return mine

    def sample_seed(self, position: int) -> int:
        # one seed per (run seed, epoch, rank, position): independent of workers and of resuming
        return ((self.seed * 1_000_003 + self.epoch * 10_007 + self.rank) * 1_000_033 + position) % 2**63

    def __iter__(self):
        mine = self.indices()
        for pos in range(self.start, len(mine)):
            yield (mine[pos], self.sample_seed(pos)) if self.shuffle else mine[pos]

    def __len__(self) -> int:
        return max(len(self.indices()) - self.start, 0)
