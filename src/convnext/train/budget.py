"""A run that fits a wall-clock budget (``opt.time_budget``): time a few steps, then fix the epoch count.

"30 minutes of this machine" is a budget people have, but how many epochs it buys differs several-fold between
machines (docs/recipes.md section 5 saw 745 to 1,430 img/s for one network on "the same" 2-core CPU). A fixed
``opt.epochs`` either overruns the budget or wastes it, and stopping a run when time is up would cut its cosine
schedule short, before the learning rate has decayed. So the trainer times a window of optimizer steps early in
the first epoch, ``fit_epochs`` turns that into the largest epoch count whose training and validation fit the
budget, and the schedule is set for that many epochs from then on.

The window ends inside the learning-rate warmup for the presets (the warmup does not depend on the run's length),
so such a run is step for step the run ``--opt.epochs N`` with the N it chose; it prints that N, and its checkpoints
keep it, so a resumed run finishes the same schedule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..data.progressive import ResizeSchedule

# Forward passes without backward or optimizer: roughly a third of a training step per image. Only the
# validation's share of the budget rests on this guess; the training steps are measured.
VALIDATION_COST = 1 / 3

clock = time.perf_counter  # tests replace it with a deterministic clock


@dataclass(frozen=True)
class Window:
    """Optimizer steps [start, end) of the first epoch, timed to fit the budget: the first ``start`` steps warm
    the allocator and kernels up and are not timed."""

    start: int
    end: int

    @classmethod
    def for_epoch(cls, steps_per_epoch: int, skip: int = 5, timed: int = 40) -> "Window":
        start = min(skip, steps_per_epoch // 4)
        return cls(start, min(start + timed, steps_per_epoch))


@dataclass(frozen=True)
class Fit:
    epochs: int
    step_s: float  # measured seconds per optimizer step
    predicted_s: float  # the whole run's predicted wall time at ``epochs``

    def message(self, budget: float, in_warmup: bool = True) -> str:
        """What the run prints; ``in_warmup``: whether the timed steps ended inside the lr warmup, so that
        ``--opt.epochs N`` gives the same lr at every step."""
        over = "" if self.predicted_s <= budget else "; one epoch does not fit the budget, so the run trains one"
        repeat = (f"--opt.epochs {self.epochs} repeats this run" if in_warmup else
                  f"--opt.epochs {self.epochs} trains as long (the steps timed after the warmup used the lr of "
                  "opt.epochs' schedule)")
        return (f"time budget {budget:g} s: {self.step_s * 1000:.1f} ms per step -> {self.epochs} epoch(s), "
                f"~{self.predicted_s:.0f} s predicted{over}; {repeat}")


def fit_epochs(budget: float, elapsed: float, step_s: float, steps_done: int, steps_per_epoch: int,
               val_steps: int, val_every: int, val_passes: int, resize: ResizeSchedule | None = None) -> Fit:
    """The most epochs (at least 1) whose remaining time fits ``budget`` seconds of the whole run.

    ``elapsed`` seconds have gone by since the run started, ``steps_done`` optimizer steps of the first epoch
    among them; the rest of an epoch costs ``step_s`` per step, and a validating epoch (every ``val_every``-th and
    the last; never at 0) ``val_passes`` passes over ``val_steps`` batches at ``VALIDATION_COST`` of a step each.
    Under progressive resizing (``resize``) the steps were timed at the first epoch's size, and every other
    epoch's steps and the validation (at the full size) are scaled by their pixels (``ResizeSchedule.cost``).
    """
    val_s = val_passes * val_steps * step_s * VALIDATION_COST if val_every > 0 else 0.0

    def predicted(epochs: int) -> float:
        validations = (epochs // val_every + (epochs % val_every != 0)) if val_every > 0 else 0
        if resize is None:
            return elapsed + (epochs * steps_per_epoch - steps_done) * step_s + validations * val_s
        steps = sum(resize.cost(e, epochs) for e in range(epochs)) * steps_per_epoch - steps_done
        return elapsed + steps * step_s + validations * val_s * resize.validation_cost(epochs)

    # No epoch costs less than the timed ones (under progressive resizing they are the smallest), and every
    # validating epoch adds its share, so no count above `avail / per_epoch` fits. The search below the bound
    # assumes the prediction grows with the count (more epochs, more steps); the final step down makes sure.
    per_epoch = steps_per_epoch * step_s + (val_s / val_every if val_every > 0 else 0.0)
    avail = budget - elapsed + steps_done * step_s
    low, high = 1, max(1, math.floor(avail / max(per_epoch, 1e-12)))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if predicted(mid) <= budget else (low, mid - 1)
    epochs = low
    while epochs > 1 and predicted(epochs) > budget:
        epochs -= 1
    return Fit(epochs, step_s, predicted(epochs))


__all__ = ["Fit", "VALIDATION_COST", "Window", "clock", "fit_epochs"]
