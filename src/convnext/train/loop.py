"""The training run, ``train(cfg) -> summary``: optimizer steps with AMP, accumulation and a NaN guard, per-epoch
validation, logging and crash-safe checkpoints, on one process or under torchrun. The pieces it drives live in
``data.assembly``, ``model``, ``ema``, ``evaluate`` (shared with ``convnext eval``), ``run_dir`` and ``snapshot``."""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

import torch
from torch import nn

from ..data.assembly import build_data, build_mixer, make_loader, model_channels
from ..data.device_feed import PrefetchFeed, train_feed
from ..data.progressive import ResizeSchedule, shrink_batch
from ..data.transforms import BatchMixer
from ..errors import UsageError
from ..weights.io import first_non_finite
from . import budget, snapshot
from . import distributed as dist_mod
from .accelerate import accelerate_for_training, to_channels_last
from .config import TrainConfig
from .ema import make_ema
from .evaluate import validate
from .model import build_model, load_init_weights
from .optim import build_optimizer, build_scheduler
from .pruning import DataPruning
from .recompute import set_grad_checkpointing
from .run_dir import CheckpointWriteError, RunDir
from .step import StepTally, train_step


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


class Trainer:
    """One run of ``cfg`` on this process: ``Trainer(cfg, dist_info).run()`` -> summary."""

    def __init__(self, cfg: TrainConfig, dist_info: dist_mod.DistInfo) -> None:
        cfg = cfg.resolved()  # an unset image size is the dataset's own from here on (config.yaml, checkpoints)
        self.cfg, self.dist = cfg, dist_info
        t, o, b, k, world = cfg.runtime, cfg.opt, cfg.data.batch_size, cfg.opt.update_freq, dist_info.world_size
        self.device = dist_info.device
        if t.amp == "fp16" and self.device.type != "cuda":
            raise UsageError("runtime.amp=fp16 needs a CUDA device (GradScaler); use runtime.amp=bf16 on CPU")
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.device.type == "cuda":  # fixed input shapes: let cuDNN time its algorithms once (as timm's train.py)
            torch.backends.cudnn.benchmark = True
        self.rundir, state = RunDir.resolve(cfg)
        # A budget run (opt.time_budget) resumed after its epochs were fitted finishes the schedule it chose.
        self.fitted_epochs = state.get("fitted_epochs") if state is not None else None
        if self.fitted_epochs:
            cfg = self.cfg = cfg.replace({"opt.epochs": self.fitted_epochs})
            o = cfg.opt
        in_chans = model_channels(cfg.data.dataset, cfg.data.grayscale, cfg.model.overrides.get("in_chans"))
        self.data = build_data(cfg.data, cfg.aug, in_chans, t.seed)
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every rerun
        self.model = build_model(cfg, len(self.data.classes), self.data.in_chans)
        if cfg.model.init and state is None:
            load_init_weights(self.model, cfg.model.init)
        self.model.to(self.device)
        accelerate_for_training(self.model, self.device, compiled=t.compile)
        if t.channels_last:
            to_channels_last(self.model)
        if t.grad_checkpointing:  # after the swaps above: it wraps whatever block class they left
            set_grad_checkpointing(self.model)
        self.resize = None  # progressive resizing (data.min_image_size): the size each epoch trains at
        if cfg.data.min_image_size:
            arch = self.model.cfg
            self.resize = ResizeSchedule(cfg.data.min_image_size, cfg.data.image_size, tuple(cfg.data.resize_ramp),
                                         valid=lambda size: arch.input_size_problem(size) is None)

        self.pruning = None  # loss-guided data pruning (data.prune_easy): each epoch's order from the images' losses
        order = None
        if cfg.data.prune_easy:
            self.pruning = DataPruning(len(self.data.train), cfg.data.prune_easy, cfg.data.prune_until)
            order = lambda epoch, generator: self.pruning.order(epoch, self.cfg.opt.epochs, generator)  # noqa: E731
        self.train_sampler = dist_mod.ShardedSampler(len(self.data.train), dist_info.rank, world, shuffle=True,
                                                     seed=t.seed, drop_last_batch=b * k, order=order)
        self.steps_per_epoch = len(self.train_sampler) // (b * k)
        if self.steps_per_epoch == 0:
            raise UsageError(f"the train split has {len(self.data.train)} samples, fewer than one optimizer step "
                             f"needs (data.batch_size {b} x opt.update_freq {k} x {world} process(es)); "
                             "lower data.batch_size")
        self.total_steps = o.epochs * self.steps_per_epoch
        self.max_steps = t.max_steps or self.total_steps
        warmup = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.lr = o.lr * (b * k * world) / o.lr_base_batch if o.lr_base_batch else o.lr
        self.optimizer = build_optimizer(self.model, self.lr, o.weight_decay, o.betas, o.eps, o.layer_decay,
                                         o.optimizer, o.momentum, o.muon_momentum,
                                         muon_distributed=o.muon_distributed and dist_info.enabled)
        self.scheduler = build_scheduler(self.optimizer, self.lr, o.min_lr, warmup, self.total_steps)
        self.ema = make_ema(self.model, cfg.reg.ema_decay, cfg.reg.ema_warmup) if cfg.reg.ema else None
        self.scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
        self.mixer = build_mixer(cfg.aug, len(self.data.classes))

        self.epoch = self.epoch_step = self.step = 0
        self.best_top1, self.best_epoch = -1.0, -1
        self.bad_steps_total = self.consecutive_bad = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        if state is not None:
            snapshot.restore(self, state)
        else:
            torch.manual_seed(t.seed + 7919 * dist_info.rank)
        self.budget_window = None  # the first epoch's steps timed to fit opt.time_budget, until it is fitted
        if o.time_budget and not self.fitted_epochs:
            window = budget.Window.for_epoch(self.steps_per_epoch)
            if self.step > window.start:  # resumed inside the window: time the same number of steps from here
                window = budget.Window(self.step, min(self.step + window.end - window.start, self.steps_per_epoch))
            self.budget_window = window
        # the paces timed since this process fitted the count, for refits at epoch ends (budget.Pace); None before
        # the window's fit, once the count is final, and in a run resumed after its fit (which keeps its count)
        self.pace: budget.Pace | None = None
        self.pace_mark: tuple[float, int] | None = None  # (clock, step) where the steps being timed began
        self.epoch_timed: tuple[float, int] | None = None  # (seconds, steps) timed of the epoch just trained

        # Step results stay on the device and are read every `read_every` steps: on a GPU a read waits for
        # the queued work (see step.py); on the CPU it costs nothing, so skipped steps are announced at once.
        self.tally = StepTally(self.device, self.consecutive_bad)
        self.read_every = 1 if self.device.type == "cpu" else t.log_every
        self.last_loss = float("nan")
        net = dist_mod.wrap_model(self.model, dist_info)
        self.train_net = torch.compile(net) if t.compile else net

        val_sampler = dist_mod.ShardedSampler(len(self.data.val), dist_info.rank, world, shuffle=False)
        # batches arrive on the device: prefetched from pinned memory, or (data.on_device) gathered there
        self.train_loader = train_feed(self.data, self.train_sampler, cfg.data, cfg.aug, self.device)
        self.val_loader = PrefetchFeed(make_loader(self.data.val, val_sampler, b, cfg.data.workers, self.device, False),
                                       self.device)
        if dist_info.is_main:
            self.rundir.prepare(cfg)
        self.logger = self.rundir.open_log(dist_info.is_main, t.tensorboard, self.step)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, best: tuple[nn.Module, str, dict] | None = None, last_metrics: dict | None = None) -> None:
        """best/last.safetensors and train_state.pt (``RunDir.save``); every rank calls it."""
        self._read_tally()  # the counters the state records
        bad = first_non_finite(self.model.state_dict())
        if bad is None and self.ema is not None:
            bad = first_non_finite(self.ema.module.state_dict())
        if bad is not None:  # a finite loss, but the update overflowed (e.g. a huge lr): nothing may be saved
            raise TrainingDiverged(f"training diverged: the weights hold NaN/Inf ({bad}) at step {self.step}; nothing "
                                   f"written, {self.rundir.what_is_kept()}. Try a lower --opt.lr "
                                   "or --opt.clip_grad 1.0, then --resume auto")
        state = snapshot.capture(self)  # a collective under DDP
        if not self.dist.is_main:
            return
        last = (self.model, snapshot.model_info(self, "model", last_metrics or {}))
        # the EMA's own last weights: a run that fixes "the last epoch's EMA" as its result in advance (e.g. one
        # trained with runtime.val_every 0) needs them as a file, not only inside train_state.pt
        last_ema = None
        if self.ema is not None:
            ema_metrics = {"ema_top1": last_metrics["ema_top1"]} if last_metrics else {}
            last_ema = (self.ema.module, snapshot.model_info(self, "ema", ema_metrics))
        best_info = None if best is None else (best[0], snapshot.model_info(self, best[1], best[2]))
        self.rundir.save(state, last, best_info, last_ema)

    # -- training ----------------------------------------------------------------------------------
    def _train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step over ``update_freq`` micro-batches (``step.train_step``); its loss and NaN/Inf
        verdict go to the device-side tally. Returns device tensors (mean loss, grad norm, bad)."""
        # the lr this step uses (logged with it); the top layer's group under layer-wise decay
        self.step_lr = max(g["lr"] for g in self.optimizer.param_groups)
        samples = self._pruned_samples() if self.pruning is not None else None
        loss, norm, bad = train_step(self, batches, samples)
        self.tally.add(loss, bad)
        return loss, norm, bad

    def _read_tally(self) -> None:
        """Bring the device-side step results to the host (one sync): loss bookkeeping, skipped steps (announced),
        and too many skipped in a row stop the run."""
        t = self.tally.read()
        if t["steps"] == 0:
            return
        self.last_loss = t["last_loss"]
        self.epoch_loss_sum += t["loss_sum"]
        self.epoch_loss_count += t["good"]
        self.bad_steps_total += t["bad"]
        self.consecutive_bad = t["run"]
        where = f"step {self.step}" if t["steps"] == 1 else f"steps {self.step - t['steps'] + 1}-{self.step}"
        if t["bad"] and self.dist.is_main:
            skipped = "step skipped" if t["steps"] == 1 else f"{t['bad']} step(s) skipped"
            print(f"warning: {where}: loss/gradient is NaN or Inf; {skipped} ({t['run']} in a row)", file=sys.stderr)
        if t["worst_run"] >= self.cfg.runtime.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: {t['worst_run']} consecutive steps with NaN/Inf loss or gradients at {where}; "
                f"{self.rundir.what_is_kept()}. "
                "Try a lower --opt.lr, --opt.clip_grad 1.0, or --runtime.amp none (fp32), then --resume auto")

    def _after_step(self, bar) -> None:
        """Progress bar, a step record every ``log_every`` steps, a mid-epoch checkpoint every ``save_every_steps``."""
        t = self.cfg.runtime
        self.window_imgs += self.cfg.data.batch_size * self.cfg.opt.update_freq * self.dist.world_size
        if bar is not None:
            bar.update(1)
        if self.step % t.log_every == 0:
            now = time.perf_counter()
            ips = self.window_imgs / max(now - self.window_t, 1e-9)
            self.window_t, self.window_imgs = now, 0
            loss = self.last_loss
            self.logger.log({"type": "step", "epoch": self.epoch, "step": self.step, "loss": loss, "lr": self.step_lr,
                             "img_per_s": ips, "time": time.time(), "skipped_steps": self.bad_steps_total})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.step_lr:.2e}", img_s=f"{ips:.1f}")
        if t.save_every_steps and self.step % t.save_every_steps == 0 and self.epoch_step < self.steps_per_epoch:
            self.save()

    def _train_epoch(self) -> None:
        """Steps until the epoch ends or ``self.max_steps`` is reached; a resumed epoch continues where it stopped."""
        k = self.cfg.opt.update_freq
        self.train_sampler.epoch = self.epoch
        self.train_sampler.start = self.epoch_step * k * self.cfg.data.batch_size
        self.train_net.train()
        bar = None
        if self.dist.is_main and self.cfg.runtime.progress and sys.stderr.isatty():  # no \r frames in logs
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch}",
                       unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
        self.window_t, self.window_imgs = time.perf_counter(), 0  # throughput since the last step record
        it = iter(self.train_loader)
        size = self.train_size()
        if self.pace is not None:  # fitted already: time this epoch for a refit
            self.pace_mark = (self._clock(), self.step)
        # data pruning: this rank's image indices of the epoch, which name the images of each step's batches
        self.epoch_indices = torch.tensor(self.train_sampler.indices()) if self.pruning is not None else None
        while self.epoch_step < self.steps_per_epoch and self.step < self.max_steps:
            batches = [next(it) for _ in range(k)]
            if size is not None:
                batches = [(shrink_batch(images, size, self.cfg.data.shrink), labels) for images, labels in batches]
            self._train_step(batches)
            self.step += 1
            self.epoch_step += 1
            if self.step % self.read_every == 0:  # read_every divides log_every: step records get a fresh loss
                self._read_tally()
            if self.budget_window is not None:
                self._time_for_budget()
            self._after_step(bar)
        if bar is not None:
            bar.close()
        self.epoch_timed = None
        if self.pace is not None:  # pace_mark is set with it
            self.epoch_timed = (self._clock() - self.pace_mark[0], self.step - self.pace_mark[1])

    def _pruned_samples(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Under data pruning, each micro-batch of the step at ``epoch_step`` as (image indices, global positions in
        the epoch's order, loss weights or None): what ``train_step`` weighs the losses by and records them under."""
        b, k, world, rank = self.cfg.data.batch_size, self.cfg.opt.update_freq, self.dist.world_size, self.dist.rank
        out = []
        for i in range(k):
            first = (self.epoch_step * k + i) * b
            positions = torch.arange(first, first + b)
            indices = self.epoch_indices[positions]
            out.append((indices, positions * world + rank, self.pruning.weights(self.epoch, self.cfg.opt.epochs,
                                                                                indices)))
        return out

    def epoch_mixer(self) -> BatchMixer | None:
        """This epoch's Mixup/CutMix, or None from aug.mixup_until of the run on (and without Mixup/CutMix): the
        steps then train on the labels, smoothed by aug.label_smoothing, as a run without mixing would."""
        if self.mixer is None or self.epoch >= self.cfg.aug.mixup_until * self.cfg.opt.epochs:
            return None
        return self.mixer

    def train_size(self) -> int | None:
        """The size this epoch's batches are resized to under progressive resizing; None: as they come."""
        return self.resize.size(self.epoch, self.cfg.opt.epochs) if self.resize is not None else None

    def _time_for_budget(self) -> None:
        """Time the budget window's steps; at its end, fit the run's epochs to opt.time_budget (``budget.py``)."""
        window = self.budget_window
        if self.step == window.start:
            self.budget_t0 = self._clock()
        if self.step < window.end:
            return
        now = self._clock()
        # Every rank trains in lockstep, so the run's pace and elapsed time are its slowest rank's; agreeing on both
        # gives every rank the same fit (ranks that trained different epochs would hang in DDP's all-reduce).
        paces = dist_mod.all_gather_object(((now - self.budget_t0) / (window.end - window.start), now - self.started),
                                           self.dist)
        step_s, elapsed = max(p[0] for p in paces), max(p[1] for p in paces)
        c = self.cfg
        fit = self._fit_budget(elapsed, step_s, self.step)
        self.budget_window, self.fitted_epochs = None, fit.epochs
        self.pace = budget.Pace(c.opt.time_budget)
        self.pace.add(step_s)
        self.pace_mark = (now, self.step)
        self._set_epochs(fit.epochs)
        self.logger.log({"type": "budget", "step": self.step, "time_budget": c.opt.time_budget, "step_s": step_s,
                         "epochs": fit.epochs, "predicted_s": fit.predicted_s, "time": time.time(),
                         **({"train_sizes": self.resize.sizes(fit.epochs)} if self.resize is not None else {})})
        if self.dist.is_main:
            self.rundir.write_config(self.cfg)
            print(fit.message(c.opt.time_budget, self._in_warmup()), file=sys.stderr)

    def _refit_budget(self, val_s: float | None) -> None:
        """At an epoch's end, until budget.REFIT_UNTIL of the budget has gone by: fit the epoch count again from the
        time gone, the median pace so far and the last validation's seconds (``val_s``: this epoch's, or None)."""
        seconds, steps = self.epoch_timed or (0.0, 0)
        cost = self.resize.cost(self.epoch, self.cfg.opt.epochs) if self.resize is not None else 1.0
        mine = (seconds / steps / cost if steps else None, val_s, self._clock() - self.started)
        # every rank must reach the same count: each statistic is the slowest rank's
        ranks = dist_mod.all_gather_object(mine, self.dist)
        paces, vals = [r[0] for r in ranks if r[0] is not None], [r[1] for r in ranks if r[1] is not None]
        elapsed, epoch_step_s = max(r[2] for r in ranks), max(paces, default=None)
        if epoch_step_s is not None:
            self.pace.add(epoch_step_s)
        if vals:
            self.pace.val_s = max(vals)
        c, was = self.cfg, self.cfg.opt.epochs
        if not self.pace.refits_at(elapsed) or self.epoch + 1 >= was:
            self.pace = None  # the count is final: no more timing
            return
        fit = self._fit_budget(elapsed, self.pace.step_s(), 0, epochs_done=self.epoch + 1, val_s=self.pace.val_s,
                               keep=was)
        self.logger.log({"type": "budget", "refit": True, "epoch": self.epoch, "step": self.step,
                         "time_budget": c.opt.time_budget, "epoch_step_s": epoch_step_s, "step_s": fit.step_s,
                         "val_s": self.pace.val_s, "elapsed_s": elapsed, "epochs": fit.epochs, "was": was,
                         "predicted_s": fit.predicted_s, "time": time.time()})
        if fit.epochs == was:
            return
        self.fitted_epochs = fit.epochs
        self._set_epochs(fit.epochs)
        if self.dist.is_main:
            self.rundir.write_config(self.cfg)
            print(fit.refit_message(c.opt.time_budget, self.epoch, was, self.pace.val_s or 0.0, self._in_warmup()),
                  file=sys.stderr)

    def _fit_budget(self, elapsed: float, step_s: float, steps_done: int, **refit: Any) -> budget.Fit:
        """``budget.fit_epochs`` for this run: its epochs' steps, its validation (model and EMA) and resizing."""
        c = self.cfg
        return budget.fit_epochs(c.opt.time_budget, elapsed, step_s, steps_done, self.steps_per_epoch,
                                 len(self.val_loader), c.runtime.val_every, 2 if self.ema is not None else 1,
                                 self.resize, **refit)

    def _in_warmup(self) -> bool:
        """Whether the steps so far all ran inside the lr warmup (whose lrs do not depend on the epoch count)."""
        return self.step <= self.scheduler.lr_lambdas[0].warmup_steps

    def _clock(self) -> float:
        """``budget.clock()`` once the device has finished the queued steps (a GPU runs ahead of the host)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return budget.clock()

    def _set_epochs(self, epochs: int) -> None:
        """Make the run ``epochs`` long from the next step on: its config, step counts and cosine schedule (during
        the warmup this changes no lr already used)."""
        self.cfg = self.cfg.replace({"opt.epochs": epochs})
        self.total_steps = epochs * self.steps_per_epoch
        self.max_steps = self.cfg.runtime.max_steps or self.total_steps
        for group, base, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            f.total_steps = self.total_steps
            group["lr"] = base * f(self.scheduler.last_epoch)

    def _validates_now(self) -> bool:
        """Whether the epoch ending now is validated: every runtime.val_every-th and the last (never at 0)."""
        every = self.cfg.runtime.val_every
        return every > 0 and ((self.epoch + 1) % every == 0 or self.epoch + 1 == self.cfg.opt.epochs)

    def _end_epoch(self) -> dict[str, Any]:
        """Validate the model (and its EMA) where due, log and print the epoch, save last (and best) checkpoints."""
        c = self.cfg
        self._read_tally()
        train_loss = self.epoch_loss_sum / max(self.epoch_loss_count, 1)
        val, val_s = {}, None
        if self._validates_now():
            t0 = self._clock() if self.pace is not None else 0.0
            val = validate(self.model, self.ema.module if self.ema is not None else None, self.val_loader,
                           self.device, c.runtime.amp, self.dist, c.runtime.channels_last)
            val_s = self._clock() - t0 if self.pace is not None else None
        record = {"type": "epoch", "epoch": self.epoch, "step": self.step, "train_loss": train_loss, **val,
                  "lr": self.step_lr, "time": time.time(), "skipped_steps": self.bad_steps_total,
                  "bad_images": self.data.bad_images}
        size = self.train_size()
        if size is not None:
            record["train_size"] = size
        if c.aug.mixup_until < 1 and self.mixer is not None:
            record["mixed"] = self.epoch_mixer() is not None  # whether this epoch's batches were mixed
        if self.pruning is not None:
            record.update(self.pruning.summary(self.epoch, self.cfg.opt.epochs))
            self.pruning.end_epoch(self.dist)  # the epoch's losses become the next epoch's scores
        self.logger.log(record)
        if self.dist.is_main:
            at = f" ({size} px)" if size is not None else ""
            text = f"epoch {self.epoch}{at}: train loss {train_loss:.4f}"
            if val:
                ema_txt = f", EMA top-1 {val['ema_top1']:.2f}" if val["ema_top1"] is not None else ""
                text += (f", val loss {val['val_loss']:.4f}, val top-1 {val['val_top1']:.2f}, "
                         f"top-5 {val['val_top5']:.2f}{ema_txt}")
            print(text, file=sys.stderr)
        metrics, best = {}, None
        if val:
            candidates = [(val["val_top1"], self.model, "model")]
            if self.ema is not None:
                candidates.append((val["ema_top1"], self.ema.module, "ema"))
            top, module, which = max(candidates, key=lambda x: x[0])
            metrics = {"val_top1": val["val_top1"], "val_top5": val["val_top5"], "ema_top1": val["ema_top1"]}
            if top > self.best_top1:
                self.best_top1, self.best_epoch = top, self.epoch
                best = (module, which, {**metrics, "best_top1": top})
        if self.pace is not None:
            self._refit_budget(val_s)
        self.epoch += 1
        self.epoch_step = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self.save(best=best, last_metrics=metrics)
        return record

    def run(self) -> dict[str, Any]:
        start_time = time.time()
        self.started = budget.clock()
        if self.budget_window is not None and self.budget_window.start == self.step:  # a window from the first step
            self.budget_t0 = self.started
        history: list[dict] = []
        stopped_early = False
        if self.dist.is_main and self.data.bad_images:
            print(f"warning: skipped {self.data.bad_images} unreadable image file(s); see the warnings above",
                  file=sys.stderr)
        while self.epoch < self.cfg.opt.epochs and self.step < self.max_steps:
            self._train_epoch()
            if self.epoch_step < self.steps_per_epoch:  # max_steps reached mid-epoch
                stopped_early = True
                self.save()
                break
            history.append(self._end_epoch())
        self.logger.close()
        # no epoch ended in this call (e.g. a finished run resumed): report the run's last evaluation
        final = history[-1] if history else self.rundir.last_epoch_record() if self.dist.is_main else {}
        plots = self.rundir.draw_plots() if self.dist.is_main and self.cfg.runtime.plots and final else []
        return {
            "run_dir": str(self.rundir.path), "epochs": self.epoch, "steps": self.step,
            "best_val_top1": self.best_top1 if self.best_top1 >= 0 else None, "best_epoch": self.best_epoch,
            "final_val_top1": final.get("val_top1"), "final_ema_top1": final.get("ema_top1"),
            "final_val_loss": final.get("val_loss"), "final_train_loss": final.get("train_loss"),
            "val_count": final.get("val_count"), "skipped_steps": self.bad_steps_total,
            "bad_images": self.data.bad_images, "wall_time_s": time.time() - start_time,
            "stopped_early": stopped_early,
            "resumed_from": str(self.rundir.resumed_from) if self.rundir.resumed_from else None,
            "history": history, "plots": plots, "last_checkpoint": str(self.rundir.last),
            "last_ema_checkpoint": str(self.rundir.last_ema) if self.ema is not None else None,
            "best_checkpoint": str(self.rundir.best) if self.best_top1 >= 0 else None,
        }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run a training job to completion (resuming if ``cfg.runtime.resume`` says so); returns a summary
    with best/final val top-1, epochs, steps, wall time and the run directory."""
    cfg = cfg.resolved().validate()
    created = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = dist_mod.setup(cfg.runtime.device)
    try:
        return Trainer(cfg, info).run()
    finally:
        if created:
            # A Trainer caught in a reference cycle (data pruning's order callback holds it) would otherwise keep
            # DDP and its process group's gloo threads alive past destroy_process_group, to be freed while the
            # interpreter shuts down, where gloo's teardown can abort the process (SIGABRT after a finished run).
            gc.collect()
            dist_mod.cleanup()


__all__ = ["CheckpointWriteError", "Trainer", "TrainingDiverged", "train"]
