"""Loss-guided data pruning (``data.prune_easy``): InfoBatch's rule (Qin et al., ICLR 2024), inside a fixed epoch.

Why: on small data most images are learned early (the 30-minute Fashion-MNIST network fits 96 % of its training
images), yet a plain epoch spends as much time on a trouser it classified right twenty epochs ago as on the shirts
it still confuses with T-shirts. InfoBatch leaves part of the well-learned images out of each pass over the data
and weighs the rest up, so the expected gradient stays the full data's while a pass costs less.

The rule, per epoch:

- each training image's *score* is its loss the last time it was trained on (``record``, merged over processes at
  the epoch's end by ``end_epoch``);
- an image scoring below the mean is *easy*: every pass over the data leaves it out with probability
  ``prune_easy`` (its draw is its own, per pass), and where it is kept its loss weighs ``1 / (1 - prune_easy)``,
  so its expected weight per pass is 1 (InfoBatch's rescaling); the other images are in every pass at weight 1;
- the first epoch (no scores yet) and the epochs from ``prune_until`` of the run on train on plain passes
  (InfoBatch's annealing: the last epochs see the data unweighted).

The epoch keeps its length: its ``steps_per_epoch`` batches are as many pruned passes as fill it, each a fresh
draw and a fresh shuffle. So the schedule, ``opt.time_budget``'s fit, the sampler's sharding and the checkpoints
work as without pruning; what changes is that the hard images come round ~1 / (1 - share pruned) times as often.
Everything is drawn from the sampler's per-epoch generator, so an epoch's order is a function of (run seed,
epoch, scores), and the scores are part of the checkpoint: a resumed run trains exactly the same batches.
"""

from __future__ import annotations

from typing import Any

import torch

from . import distributed as dist_mod


class DataPruning:
    """The scores of ``size`` training images and the pruned order of each epoch built from them."""

    def __init__(self, size: int, prune_easy: float, prune_until: float) -> None:
        self.size, self.prune_easy, self.prune_until = size, prune_easy, prune_until
        self.scores = torch.full((size,), float("nan"), dtype=torch.float64)  # NaN: never trained on
        # this epoch's losses so far, on this process: the last one of each image, and its position in the epoch's
        # global order (the sampler's round-robin makes rank r's position p the global p * world + r; -1: not seen)
        self.latest = torch.zeros(size, dtype=torch.float64)
        self.stamp = torch.full((size,), -1, dtype=torch.long)
        self._plan: tuple[int, torch.Tensor, torch.Tensor | None] | None = None  # (epoch, order, easy mask)

    # -- the epoch's order -------------------------------------------------------------------------------------
    def prunes(self, epoch: int, epochs: int) -> bool:
        """Whether ``epoch`` of a run of ``epochs`` trains on pruned passes."""
        return 1 <= epoch < self.prune_until * epochs

    def order(self, epoch: int, epochs: int, generator: torch.Generator) -> list[int]:
        """The epoch's global order of ``size`` image indices (``ShardedSampler``'s ``order``): a plain permutation
        drawn from ``generator`` where the epoch does not prune, else pruned passes drawn from it."""
        return self._planned(epoch, epochs, generator)[0].tolist()

    def weights(self, epoch: int, epochs: int, indices: torch.Tensor) -> torch.Tensor | None:
        """The loss weight of each image in ``indices`` this epoch; None where the epoch does not prune."""
        easy = self._planned(epoch, epochs, None)[1]
        if easy is None:
            return None
        up = torch.tensor(1.0 / (1.0 - self.prune_easy), dtype=torch.float32)
        return torch.where(easy[indices], up, torch.ones((), dtype=torch.float32))

    def _planned(self, epoch: int, epochs: int, generator: torch.Generator | None):
        """(order, easy mask or None) of the epoch, drawn when the epoch starts and kept until its end: the run's
        length may change within an epoch (``opt.time_budget`` fits it in the first), its order may not."""
        if self._plan is None or self._plan[0] != epoch:
            if generator is None:
                raise RuntimeError("DataPruning: the epoch's order must be drawn (by the sampler) before its weights")
            if not self.prunes(epoch, epochs):
                self._plan = (epoch, torch.randperm(self.size, generator=generator), None)
            else:
                # an image never trained on (NaN: the few an epoch's last partial batch leaves out) is not easy
                easy = self.scores < torch.nanmean(self.scores)
                self._plan = (epoch, self._passes(easy, generator), easy)
        return self._plan[1], self._plan[2]

    def _passes(self, easy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``size`` indices: passes over the data, each without a random ``prune_easy`` of the easy images, shuffled."""
        passes, n = [], 0
        while n < self.size:
            kept = (~easy | (torch.rand(self.size, generator=generator) >= self.prune_easy)).nonzero().squeeze(1)
            passes.append(kept[torch.randperm(len(kept), generator=generator)])
            n += len(kept)
        return torch.cat(passes)[: self.size]

    # -- the scores --------------------------------------------------------------------------------------------
    def record(self, indices: torch.Tensor, losses: torch.Tensor, positions: torch.Tensor) -> None:
        """The per-image ``losses`` of a micro-batch of images ``indices`` at global ``positions`` of the epoch."""
        # an image twice in one batch (the seam of two passes): its later position's loss, without relying on
        # the order in which index assignment writes duplicates
        last = {i: j for j, i in enumerate(indices.tolist())}
        keep = torch.tensor(list(last.values()), dtype=torch.long)
        self.latest[indices[keep]] = losses.detach().to("cpu", torch.float64)[keep]
        self.stamp[indices[keep]] = positions[keep]

    def merged(self, info: dist_mod.DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's (latest loss, position) of every image over all processes: per image, the loss recorded at
        the latest position (one process holds it, so the merge is exact). A collective under DDP."""
        if not info.enabled:
            return self.latest.clone(), self.stamp.clone()
        stamp = dist_mod.all_reduce(self.stamp.clone(), info, "max")
        mine = self.stamp == stamp
        latest = dist_mod.all_reduce(torch.where(mine, self.latest, 0.0), info, "sum")
        return latest, stamp

    def end_epoch(self, info: dist_mod.DistInfo) -> None:
        """Turn this epoch's losses into the scores the next epoch is pruned by (every process calls it)."""
        latest, stamp = self.merged(info)
        seen = stamp >= 0
        self.scores[seen] = latest[seen]
        self.latest.zero_()
        self.stamp.fill_(-1)
        self._plan = None

    def state_dict(self, info: dist_mod.DistInfo) -> dict[str, Any]:
        """Scores and this epoch's losses so far, merged over processes (a collective under DDP)."""
        latest, stamp = self.merged(info)
        return {"scores": self.scores.clone(), "latest": latest, "stamp": stamp}

    def load_state_dict(self, state: dict[str, Any], info: dist_mod.DistInfo) -> None:
        """Put ``state`` back; under DDP rank 0 holds the merged epoch so far (the merge at its end is the same)."""
        if state["scores"].shape != self.scores.shape:
            raise RuntimeError(f"the checkpoint's pruning scores cover {len(state['scores'])} images, "
                               f"this run's train split {self.size}")
        self.scores = state["scores"].clone()
        if info.rank == 0:
            self.latest, self.stamp = state["latest"].clone(), state["stamp"].clone()
        self._plan = None

    def summary(self, epoch: int, epochs: int) -> dict[str, Any]:
        """What the epoch's order holds, for its log record: the share of easy images and of distinct images."""
        if self._plan is None or self._plan[0] != epoch or self._plan[2] is None:
            return {}
        order, easy = self._plan[1], self._plan[2]
        return {"prune_easy_share": round(float(easy.double().mean()), 4),
                "prune_distinct_share": round(len(order.unique()) / self.size, 4)}


__all__ = ["DataPruning"]
