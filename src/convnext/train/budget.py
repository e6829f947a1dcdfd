"""A run that fits a wall-clock budget (``opt.time_budget``): time its steps, and fix the epoch count from them.

"30 minutes of this machine" is a budget people have, but how many epochs it buys differs several-fold between
machines (docs/recipes.md section 5 saw 745 to 1,430 img/s for one network on "the same" 2-core CPU). A fixed
``opt.epochs`` either overruns the budget or wastes it, and stopping a run when time is up would cut its cosine
schedule short, before the learning rate has decayed. So the trainer times a window of optimizer steps early in
the first epoch, ``fit_epochs`` turns that into the largest epoch count whose training and validation fit the
budget, and the schedule is set for that many epochs from then on.

The window ends inside the learning-rate warmup for the presets (the warmup does not depend on the run's length),
so such a run is step for step the run ``--opt.epochs N`` with the N it chose; it prints that N, and its checkpoints
keep it, so a resumed run finishes the same schedule.

Forty steps are a few seconds, and a machine's pace moves: another job for a minute, a clock that drifts. One slow
window once cost a 30-minute run 15 % of its budget (docs/recipes.md, ``cpu30_muon_engine``). So the count is fitted
again at every epoch's end until ``REFIT_UNTIL`` of the budget has gone by (``Pace``): from the time actually gone,
the median pace of the epochs so far (one odd epoch moves a median little) and the last validation's measured time;
it grows the count only with ``REFIT_SLACK`` of the budget to spare, so a pace near a boundary does not flip it.
A refit that changes the count after the warmup changes the cosine's remaining learning rates; the run prints it,
and ``--opt.epochs N`` then trains as long, not step for step the same. A resumed run keeps the count it had.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from ..data.progressive import ResizeSchedule

# Forward passes without backward or optimizer: roughly a third of a training step per image. Only the
# validation's share of the budget rests on this guess; the training steps are measured.
VALIDATION_COST = 1 / 3

# Epochs that end before this share of the budget has gone by fit the count again; later ones keep it, so the last
# half of the cosine runs as planned (and a late refit could not move much time anyway).
REFIT_UNTIL = 0.5
# A refit grows the count only to one predicted to leave this share of the budget spare (fit_epochs' ``keep``).
REFIT_SLACK = 0.01

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
    step_s: float  # seconds per optimizer step (at the first epoch's image size), measured
    predicted_s: float  # the whole run's predicted wall time at ``epochs``

    def message(self, budget: float, in_warmup: bool = True) -> str:
        """What the run prints; ``in_warmup``: whether the timed steps ended inside the lr warmup, so that
        ``--opt.epochs N`` gives the same lr at every step."""
        over = "" if self.predicted_s <= budget else "; one epoch does not fit the budget, so the run trains one"
        return (f"time budget {budget:g} s: {self.step_s * 1000:.1f} ms per step -> {self.epochs} epoch(s), "
                f"~{self.predicted_s:.0f} s predicted{over}; {self._repeat(in_warmup)}")

    def refit_message(self, budget: float, after_epoch: int, was: int, val_s: float, in_warmup: bool) -> str:
        """What a refit that changed the count prints (``after_epoch``: the epoch that just ended, from 0)."""
        val = f", {val_s:.1f} s per validation" if val_s else ""
        return (f"time budget {budget:g} s, refitted after epoch {after_epoch}: {self.step_s * 1000:.1f} ms per step"
                f"{val} -> {self.epochs} epoch(s) (was {was}), ~{self.predicted_s:.0f} s predicted; "
                f"{self._repeat(in_warmup)}")

    def _repeat(self, in_warmup: bool) -> str:
        return (f"--opt.epochs {self.epochs} repeats this run" if in_warmup else
                f"--opt.epochs {self.epochs} trains as long (steps after the warmup ran under another count's "
                "learning rates)")


def validations_between(first: int, epochs: int, val_every: int) -> int:
    """How many of epochs [first, epochs) validate: every ``val_every``-th and the last (none if 0)."""
    if val_every <= 0:
        return 0
    return sum((e + 1) % val_every == 0 or e + 1 == epochs for e in range(first, epochs))


def fit_epochs(budget: float, elapsed: float, step_s: float, steps_done: int, steps_per_epoch: int,
               val_steps: int, val_every: int, val_passes: int, resize: ResizeSchedule | None = None, *,
               epochs_done: int = 0, val_s: float | None = None, keep: int | None = None) -> Fit:
    """The most epochs (at least ``epochs_done + 1``) whose remaining time fits ``budget`` seconds of the whole run.

    ``elapsed`` seconds have gone by since the run started; ``epochs_done`` whole epochs and ``steps_done`` steps of
    the next are trained. The rest of an epoch costs ``step_s`` per step, and a validating epoch (every
    ``val_every``-th and the last; never at 0) ``val_s`` seconds: measured, or else guessed as ``val_passes``
    passes over ``val_steps`` batches at ``VALIDATION_COST`` of a step each. Under progressive resizing
    (``resize``) ``step_s`` is the first epoch's size's, and every other epoch's steps (and a guessed validation,
    at the full size) are scaled by their pixels (``ResizeSchedule.cost``).

    ``keep``: the count in force, at a refit. It shrinks only when it no longer fits, and grows only to a count that
    leaves ``REFIT_SLACK`` of the budget spare, so a pace near the boundary between two counts does not move the
    count back and forth (each move changes the remaining learning rates).
    """
    guessed = val_s is None
    if guessed:
        val_s = val_passes * val_steps * step_s * VALIDATION_COST if val_every > 0 else 0.0

    def cost(epoch: int, epochs: int) -> float:
        return 1.0 if resize is None else resize.cost(epoch, epochs)

    def predicted(epochs: int) -> float:
        steps = (sum(cost(e, epochs) for e in range(epochs_done, epochs)) * steps_per_epoch
                 - steps_done * cost(epochs_done, epochs))
        one_val = val_s * (resize.validation_cost(epochs) if guessed and resize is not None else 1.0)
        return elapsed + steps * step_s + validations_between(epochs_done, epochs, val_every) * one_val

    # No epoch costs less than the first (under progressive resizing it is the smallest), and every validating
    # epoch adds its share, so no count above `epochs_done + avail / per_epoch` fits. The search below the bound
    # assumes the prediction grows with the count (more epochs, more steps); the final step down makes sure.
    per_epoch = steps_per_epoch * step_s + (val_s / val_every if val_every > 0 else 0.0)
    avail = budget - elapsed + steps_done * step_s
    low = epochs_done + 1
    high = max(low, epochs_done + math.floor(max(avail, 0.0) / max(per_epoch, 1e-12)))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if predicted(mid) <= budget else (low, mid - 1)
    epochs = low
    while epochs > epochs_done + 1 and predicted(epochs) > budget:
        epochs -= 1
    if keep is not None and epochs > keep:
        while epochs > keep and predicted(epochs) > budget * (1 - REFIT_SLACK):
            epochs -= 1
    return Fit(epochs, step_s, predicted(epochs))


class Pace:
    """The paces a run has measured, for refits at its epochs' ends (see the module's docstring): one sample of
    seconds per step (at the first epoch's size) per stretch of steps timed, and the last validation's seconds."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.samples: list[float] = []
        self.val_s: float | None = None

    def add(self, step_s: float) -> None:
        self.samples.append(step_s)

    def step_s(self) -> float:
        return statistics.median(self.samples)

    def refits_at(self, elapsed: float) -> bool:
        """Whether an epoch ending ``elapsed`` seconds into the run refits the count."""
        return bool(self.samples) and elapsed < REFIT_UNTIL * self.budget


__all__ = ["Fit", "Pace", "REFIT_SLACK", "REFIT_UNTIL", "VALIDATION_COST", "Window", "clock", "fit_epochs",
           "validations_between"]
