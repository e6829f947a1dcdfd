"""The training run: ``train(cfg) -> summary``. Data, model, optimizer, EMA, AMP, accumulation,
NaN guard, evaluation, logging and crash-safe checkpoints, on one process or under torchrun.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import data as data_mod
from ..checkpoint import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, Preprocess, save_model
from ..errors import UsageError
from ..models import ConvNeXt, get_entry
from ..weights import load_weights
from . import distributed as dist_mod
from .config import TrainConfig
from .logging import RunLogger
from .optim import build_optimizer, build_scheduler
from .state import (PREV_NAME, STATE_NAME, find_resume_state, load_train_state, rng_state, save_train_state,
                    set_rng_state)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the previous one is intact."""


# ---- pieces shared with `convnext eval` ---------------------------------------------------------

def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none", num_classes: int | None = None,
             dist_info: dist_mod.DistInfo | None = None, channels_last: bool = False,
             confusion: bool = False) -> dict[str, Any]:
    """Loss, top-1 and top-5 (percent) over every sample of ``loader``, summed over ranks.

    With ``confusion=True`` also a (num_classes x num_classes) count matrix, rows = true class.
    """
    dist_info = dist_info or dist_mod.DistInfo(device=device)
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    k = num_classes or 0
    matrix = torch.zeros(k, k, dtype=torch.float64) if confusion else None
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += labels.numel()
        if matrix is not None:
            idx = labels.cpu() * k + top[:, 0].cpu()
            matrix += torch.bincount(idx, minlength=k * k).reshape(k, k).double()
    totals = dist_mod.all_reduce_sum([loss_sum, correct1, correct5, count], dist_info).tolist()
    if matrix is not None and dist_info.enabled:
        matrix = dist_mod.all_reduce_sum(matrix, dist_info)
    model.train(was_training)
    n = max(totals[3], 1.0)
    out = {"loss": totals[0] / n, "top1": 100 * totals[1] / n, "top5": 100 * totals[2] / n, "count": int(totals[3])}
    if matrix is not None:
        out["confusion"] = matrix.long()
    return out


def ema_warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after ``num_averaged`` updates, with warmup: min(decay, (1 + n) / (10 + n)).

    Without warmup a decay of 0.998 still gives the random initial weights ~50 % of the average after
    300 steps; the warmup lets the EMA follow the model early and settles on ``decay`` later.
    """
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """EMA of weights and buffers: the first update copies the model, then ema = d * ema + (1 - d) * w,
    with d = ``decay`` or, with ``warmup``, ``ema_warmup_decay(decay, updates so far)``."""
    if not warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def warmup_ema(ema_params, params, num_averaged):
        if not torch.is_floating_point(ema_params[0]):  # e.g. BatchNorm's num_batches_tracked
            torch._foreach_copy_(ema_params, params)
            return
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_warmup_decay(decay, int(num_averaged)))

    return AveragedModel(model, multi_avg_fn=warmup_ema, use_buffers=True)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def _make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(round(v / divisor)) * divisor)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> ConvNeXt:
    """The model the config names: registered config + overrides + width scaling + data-given sizes."""
    entry = get_entry(cfg.model.name)
    arch = entry.config.replace(**cfg.model.overrides)
    changes: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    drop_path = cfg.reg.drop_path if cfg.reg.drop_path is not None else entry.paper_drop_path
    if "drop_path_rate" not in cfg.model.overrides:
        changes["drop_path_rate"] = drop_path
    if cfg.model.width_mult != 1.0:
        changes["dims"] = tuple(_make_divisible(d * cfg.model.width_mult) for d in arch.dims)
        if arch.stem_dim is not None:
            changes["stem_dim"] = _make_divisible(arch.stem_dim * cfg.model.width_mult)
    model = ConvNeXt(arch.replace(**changes))
    model.name = cfg.model.name
    return model


def _load_init_weights(model: ConvNeXt, path: str) -> None:
    # Any layout load_weights knows (ours, official, timm, torchvision, HF); a different class count
    # keeps the fresh head and a 3-channel stem is adapted to in_chans, each with a warning.
    load_weights(model, path)


# ---- data ---------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    train: Any
    val: Any
    classes: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bad_images: int


def _limit(ds, n: int):
    if not n or n >= len(ds):
        return ds
    # A fixed shuffle (independent of the run seed) so "the first n" covers every class.
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values.tolist()
    sub = torch.utils.data.Subset(ds, order)
    sub.classes = ds.classes
    sub.channels = getattr(ds, "channels", 3)
    return sub


def build_data(cfg: TrainConfig) -> DataBundle:
    d = cfg.data
    entry_cfg = get_entry(cfg.model.name).config.replace(**cfg.model.overrides)
    src_channels = 1 if d.dataset == "fashion_mnist" else 3
    if "in_chans" in cfg.model.overrides:
        in_chans = entry_cfg.in_chans
    elif src_channels == 1 and d.grayscale == "in_chans":
        in_chans = 1
    else:
        in_chans = 3
    kw = dict(root=d.root, channels=in_chans, strict=d.strict, verify=d.verify, synthetic_samples=d.synthetic_samples,
              synthetic_classes=d.synthetic_classes, image_size=d.image_size, seed=cfg.runtime.seed)
    with data_mod.print_warnings_as_lines():
        train = data_mod.load_dataset(d.dataset, "train", **kw)
        val = data_mod.load_dataset(d.dataset, "val", **kw)
    data_mod.check_same_classes(train, val)
    if len(train) == 0 or len(val) == 0:
        raise UsageError(f"data.dataset={d.dataset}: the {'train' if not len(train) else 'val'} split is empty")
    bad = len(getattr(train, "bad_files", [])) + len(getattr(val, "bad_files", []))
    if d.mean is not None:
        mean, std = tuple(d.mean), tuple(d.std)
    elif d.dataset == "fashion_mnist":
        mean, std = data_mod.FASHION_MNIST_MEAN * in_chans, data_mod.FASHION_MNIST_STD * in_chans
    elif in_chans == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (sum(IMAGENET_MEAN) / 3,) * in_chans, (sum(IMAGENET_STD) / 3,) * in_chans
    if len(mean) != in_chans:
        raise UsageError(f"data.mean/std have {len(mean)} values but the model takes {in_chans} channel(s)")
    ds_channels = getattr(train, "channels", in_chans)
    train_tf = data_mod.build_train_transform(cfg.aug, d.image_size, mean, std, in_chans, ds_channels)
    eval_tf = data_mod.build_eval_transform(d.image_size, cfg.aug.crop_ratio, cfg.aug.interpolation, mean, std,
                                            in_chans, ds_channels)
    train_ds = data_mod.SeededTransform(_limit(train, d.limit_train), train_tf)
    val_ds = data_mod.SeededTransform(_limit(val, d.limit_val), eval_tf)
    return DataBundle(train_ds, val_ds, list(train.classes), in_chans, mean, std, bad)


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool):
    # Its own generator: creating an iterator would otherwise draw from the global RNG, so a run
    # resumed mid-epoch (one extra iterator) would see different dropout/mixup draws.
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


# ---- the run ------------------------------------------------------------------------------------

def _resolve_run(cfg: TrainConfig, dist_info) -> tuple[Path, dict[str, Any] | None, Path | None]:
    """Run directory and the state to resume from (None for a fresh run). Writes nothing."""
    t = cfg.runtime
    name = t.run_name or f"{cfg.model.name}-{cfg.data.dataset}"
    run_dir = Path(t.out) / name
    resume_from, state = None, None
    if t.resume == "auto":
        found = find_resume_state(run_dir)
        if found is not None:
            resume_from, state = found
        elif any((run_dir / n).exists() for n in (STATE_NAME, PREV_NAME)):
            # starting over here would overwrite the run's best/last checkpoints
            raise UsageError(f"{run_dir}: --resume auto found no readable {STATE_NAME} (damaged); pass --resume PATH "
                             "to another training state, or --runtime.overwrite true to start over")
    elif t.resume:
        resume_from = Path(t.resume)
        state = load_train_state(resume_from)
    # --resume auto with nothing to resume (e.g. killed before the first checkpoint) starts over
    if state is None and not t.overwrite and t.resume != "auto" and (run_dir / "metrics.jsonl").exists():
        raise UsageError(f"{run_dir}: a run already exists there; pass --resume auto to continue it, "
                         "--runtime.run_name NEW for a new run, or --runtime.overwrite true to start over")
    return run_dir, state, resume_from


class Trainer:
    def __init__(self, cfg: TrainConfig, dist_info: dist_mod.DistInfo) -> None:
        self.cfg, self.dist = cfg, dist_info
        t, o = cfg.runtime, cfg.opt
        self.device = dist_info.device
        if t.amp == "fp16" and self.device.type != "cuda":
            raise UsageError("runtime.amp=fp16 needs a CUDA device (GradScaler); use runtime.amp=bf16 on CPU")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.run_dir, state, self.resumed_from = _resolve_run(cfg, dist_info)
        self.data = build_data(cfg)
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every rerun
        self.model = build_model(cfg, len(self.data.classes), self.data.in_chans)
        if cfg.model.init and state is None:
            _load_init_weights(self.model, cfg.model.init)
        self.model.to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)

        world = dist_info.world_size
        b, k = cfg.data.batch_size, o.update_freq
        self.train_sampler = dist_mod.ShardedSampler(len(self.data.train), dist_info.rank, world, shuffle=True,
                                                     seed=t.seed, drop_last_batch=b * k)
        self.steps_per_epoch = len(self.train_sampler) // (b * k)
        if self.steps_per_epoch == 0:
            raise UsageError(f"the train split has {len(self.data.train)} samples, fewer than one optimizer step "
                             f"needs (data.batch_size {b} x opt.update_freq {k} x {world} process(es)); "
                             "lower data.batch_size")
        self.total_steps = o.epochs * self.steps_per_epoch
        warmup = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.lr = o.lr * (b * k * world) / o.lr_base_batch if o.lr_base_batch else o.lr
        self.optimizer = build_optimizer(self.model, self.lr, o.weight_decay, o.betas, o.eps, o.layer_decay,
                                         o.optimizer, o.momentum)
        self.scheduler = build_scheduler(self.optimizer, self.lr, o.min_lr, warmup, self.total_steps)
        self.ema = make_ema(self.model, cfg.reg.ema_decay, cfg.reg.ema_warmup) if cfg.reg.ema else None
        self.scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
        aug = cfg.aug
        self.mixer = (data_mod.BatchMixer(len(self.data.classes), aug.mixup, aug.cutmix, aug.mixup_switch_prob,
                                          aug.mixup_prob, aug.label_smoothing)
                      if aug.mixup > 0 or aug.cutmix > 0 else None)

        self.epoch = self.epoch_step = self.step = 0
        self.best_top1, self.best_epoch = -1.0, -1
        self.bad_steps_total = self.consecutive_bad = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        if state is not None:
            self._restore(state)
        else:
            torch.manual_seed(t.seed + 7919 * dist_info.rank)

        net: nn.Module = self.model
        if dist_info.enabled:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_net = torch.compile(net) if t.compile else net

        val_sampler = dist_mod.ShardedSampler(len(self.data.val), dist_info.rank, world, shuffle=False)
        self.train_loader = make_loader(self.data.train, self.train_sampler, b, cfg.data.workers, self.device, True)
        self.val_loader = make_loader(self.data.val, val_sampler, b, cfg.data.workers, self.device, False)

        if dist_info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # temp files of writes that a crash interrupted (the real files are intact)
            for stray in self.run_dir.glob(".*.tmp"):
                stray.unlink(missing_ok=True)
            cfg.save(self.run_dir / "config.yaml")
        self.logger = RunLogger(self.run_dir, enabled=dist_info.is_main, tensorboard=t.tensorboard,
                                resume_step=self.step if state is not None else None)
        if state is None and dist_info.is_main and (t.overwrite or t.resume == "auto"):
            self.logger.close()
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            self.logger = RunLogger(self.run_dir, enabled=True, tensorboard=t.tensorboard)

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rng = rng_state()
        if self.dist.enabled:
            all_rng = [None] * self.dist.world_size
            torch.distributed.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        return {
            "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": all_rng, "world_size": self.dist.world_size,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "bad_steps_total": self.bad_steps_total, "consecutive_bad": self.consecutive_bad,
            "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_count": self.epoch_loss_count,
            "config": self.cfg.to_dict(),
        }

    def _restore(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if self.ema is not None and s.get("ema") is not None:
            self.ema.load_state_dict(s["ema"])
        if self.scaler is not None and s.get("scaler") is not None:
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.epoch_step, self.step = s["epoch"], s["epoch_step"], s["step"]
        self.best_top1, self.best_epoch = s.get("best_top1", -1.0), s.get("best_epoch", -1)
        self.bad_steps_total, self.consecutive_bad = s.get("bad_steps_total", 0), s.get("consecutive_bad", 0)
        self.epoch_loss_sum, self.epoch_loss_count = s.get("epoch_loss_sum", 0.0), s.get("epoch_loss_count", 0)
        rngs = s["rng"]
        if s.get("world_size", 1) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # a different process count cannot replay the same randomness; stay reproducible anyway
            torch.manual_seed(self.cfg.runtime.seed + 7919 * self.dist.rank + self.step)
        if self.dist.is_main:
            print(f"resuming from epoch {self.epoch} step {self.step} (epoch step {self.epoch_step})", file=sys.stderr)

    def _model_info(self, weights: str, metrics: dict[str, Any]) -> ModelInfo:
        c = self.cfg
        pre = Preprocess(input_size=c.data.image_size, mean=tuple(self.data.mean), std=tuple(self.data.std),
                         crop_ratio=c.aug.crop_ratio, interpolation=c.aug.interpolation, channels=self.data.in_chans)
        train = {"epoch": self.epoch, "step": self.step, "weights": weights, "dataset": c.data.dataset, **metrics}
        return ModelInfo(config=self.model.cfg, name=c.model.name, class_names=self.data.classes,
                         preprocess=pre, train=train)

    def save(self, best: tuple[nn.Module, str, dict] | None = None, last_metrics: dict | None = None) -> None:
        """Write best.safetensors (if given), last.safetensors, then train_state.pt.

        train_state.pt goes last because it is what --resume trusts: a crash before it is written
        resumes from the previous state, which replays the steps and rewrites the weights files.
        """
        state = self._state()  # a collective under DDP: every rank calls save()
        if not self.dist.is_main:
            return
        try:
            if best is not None:
                module, which, metrics = best
                save_model(module, self.run_dir / "best.safetensors", self._model_info(which, metrics))
            save_model(self.model, self.run_dir / "last.safetensors", self._model_info("model", last_metrics or {}))
            save_train_state(self.run_dir, state)
        except Exception as e:  # noqa: BLE001 - a full disk comes as OSError, RuntimeError (torch) or SafetensorError
            if isinstance(e, OSError) and e.strerror:
                reason = e.strerror
            else:
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            try:
                reason += f"; {shutil.disk_usage(self.run_dir).free / 1e6:.1f} MB free there"
            except OSError:
                pass
            raise CheckpointWriteError(
                f"could not write a checkpoint in {self.run_dir} ({reason}); the previous checkpoint "
                f"is intact: free disk space, then rerun with --resume auto") from e

    # -- training ----------------------------------------------------------------------------------
    def _train_step(self, batches) -> tuple[float, float, bool]:
        """One optimizer step over ``update_freq`` micro-batches. Returns (mean loss, grad norm, ok)."""
        c, k = self.cfg, len(batches)
        # the lr this step uses (logged with it); the top layer's group under layer-wise decay
        self.step_lr = max(g["lr"] for g in self.optimizer.param_groups)
        loss_sum = torch.zeros((), device=self.device)
        for i, (images, labels) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.mixer is not None:
                images, targets = self.mixer(images, labels)
            if c.runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext()
            if self.dist.enabled and i < k - 1:
                sync = self.train_net.no_sync() if hasattr(self.train_net, "no_sync") else sync
            with sync:
                with autocast(self.device, c.runtime.amp):
                    logits = self.train_net(images)
                logits = logits.float()
                if self.mixer is not None:
                    loss = soft_target_cross_entropy(logits, targets)
                else:
                    loss = F.cross_entropy(logits, labels, label_smoothing=c.aug.label_smoothing)
                scaled = loss / k
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if c.opt.clip_grad:
            norm = torch.nn.utils.clip_grad_norm_(params, c.opt.clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        stats = torch.stack([loss_sum / k, norm.to(loss_sum.device).float()])
        if self.dist.enabled:
            stats = dist_mod.all_reduce_sum(stats, self.dist).float()
            stats[0] /= self.dist.world_size
            stats[1] /= self.dist.world_size  # identical on every rank after DDP's gradient all-reduce
        loss_v, norm_v = stats.tolist()
        # fp16 overflow in the gradients is the scaler's business (it skips and lowers the scale);
        # in fp32/bf16 a non-finite gradient is as bad as a non-finite loss.
        ok = math.isfinite(loss_v) and (self.scaler is not None or math.isfinite(norm_v))
        if ok:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        elif self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss_v, norm_v, ok

    def _log_step(self, loss: float, lr: float, img_per_s: float) -> None:
        self.logger.log({"type": "step", "epoch": self.epoch, "step": self.step, "loss": loss, "lr": lr,
                         "img_per_s": img_per_s, "time": time.time(), "skipped_steps": self.bad_steps_total})

    def _evaluate_epoch(self, train_loss: float) -> dict[str, Any]:
        c = self.cfg
        raw = evaluate(self.model, self.val_loader, self.device, c.runtime.amp, dist_info=self.dist,
                       channels_last=c.runtime.channels_last)
        ema = (evaluate(self.ema.module, self.val_loader, self.device, c.runtime.amp, dist_info=self.dist,
                        channels_last=c.runtime.channels_last) if self.ema is not None else None)
        return {"type": "epoch", "epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                "val_loss": raw["loss"], "val_top1": raw["top1"], "val_top5": raw["top5"],
                "ema_top1": ema["top1"] if ema else None, "ema_val_loss": ema["loss"] if ema else None,
                "val_count": raw["count"], "lr": self.step_lr, "time": time.time(),
                "skipped_steps": self.bad_steps_total, "bad_images": self.data.bad_images}

    def run(self) -> dict[str, Any]:
        c = self.cfg
        start_time = time.time()
        k, b = c.opt.update_freq, c.data.batch_size
        world = self.dist.world_size
        max_steps = c.runtime.max_steps or self.total_steps
        history: list[dict] = []
        final: dict[str, Any] = {}
        stopped_early = False
        if self.dist.is_main and self.data.bad_images:
            print(f"warning: skipped {self.data.bad_images} unreadable image file(s); see the warnings above",
                  file=sys.stderr)
        while self.epoch < c.opt.epochs and self.step < max_steps:
            self.train_sampler.epoch = self.epoch
            self.train_sampler.start = self.epoch_step * k * b
            self.train_net.train()
            bar = None
            if self.dist.is_main and c.runtime.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch}",
                           unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
            window_t, window_imgs = time.perf_counter(), 0
            it = iter(self.train_loader)
            while self.epoch_step < self.steps_per_epoch and self.step < max_steps:
                batches = [next(it) for _ in range(k)]
                loss, _norm, ok = self._train_step(batches)
                self.step += 1
                self.epoch_step += 1
                window_imgs += b * k * world
                if ok:
                    self.consecutive_bad = 0
                    self.epoch_loss_sum += loss
                    self.epoch_loss_count += 1
                else:
                    self.bad_steps_total += 1
                    self.consecutive_bad += 1
                    if self.dist.is_main:
                        print(f"warning: step {self.step}: loss/gradient is NaN or Inf; step skipped "
                              f"({self.consecutive_bad} in a row)", file=sys.stderr)
                    if self.consecutive_bad >= c.runtime.max_bad_steps:
                        raise TrainingDiverged(
                            f"training diverged: {self.consecutive_bad} consecutive steps with NaN/Inf loss or "
                            f"gradients at step {self.step}; the last good checkpoint is kept in {self.run_dir}. "
                            "Try a lower --opt.lr, --opt.clip_grad 1.0, or --runtime.amp none (fp32), "
                            "then --resume auto")
                lr = self.step_lr
                if bar is not None:
                    bar.update(1)
                if self.step % c.runtime.log_every == 0:
                    now = time.perf_counter()
                    ips = window_imgs / max(now - window_t, 1e-9)
                    window_t, window_imgs = now, 0
                    self._log_step(loss, lr, ips)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                if (c.runtime.save_every_steps and self.step % c.runtime.save_every_steps == 0
                        and self.epoch_step < self.steps_per_epoch):
                    self.save()
            if bar is not None:
                bar.close()
            if self.epoch_step < self.steps_per_epoch:  # max_steps reached mid-epoch
                stopped_early = True
                self.save()
                break
            train_loss = self.epoch_loss_sum / max(self.epoch_loss_count, 1)
            record = self._evaluate_epoch(train_loss)
            history.append(record)
            self.logger.log(record)
            if self.dist.is_main:
                ema_txt = f", EMA top-1 {record['ema_top1']:.2f}" if record["ema_top1"] is not None else ""
                print(f"epoch {self.epoch}: train loss {train_loss:.4f}, val loss {record['val_loss']:.4f}, "
                      f"val top-1 {record['val_top1']:.2f}, top-5 {record['val_top5']:.2f}{ema_txt}",
                      file=sys.stderr)
            best = None
            candidates = [(record["val_top1"], self.model, "model")]
            if self.ema is not None:
                candidates.append((record["ema_top1"], self.ema.module, "ema"))
            top, module, which = max(candidates, key=lambda x: x[0])
            metrics = {"val_top1": record["val_top1"], "val_top5": record["val_top5"], "ema_top1": record["ema_top1"]}
            self.epoch += 1
            self.epoch_step = 0
            self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            if top > self.best_top1:
                self.best_top1, self.best_epoch = top, self.epoch - 1
                best = (module, which, {**metrics, "best_top1": top})
            self.save(best=best, last_metrics=metrics)
            final = record
        self.logger.close()
        if not final and self.dist.is_main:  # resumed a finished run: report its last evaluation
            from .logging import read_metrics

            done = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if r.get("type") == "epoch"]
            final = done[-1] if done else {}
        plots = self._plots() if self.dist.is_main and c.runtime.plots and final else []
        return {
            "run_dir": str(self.run_dir), "epochs": self.epoch, "steps": self.step,
            "best_val_top1": self.best_top1 if self.best_top1 >= 0 else None, "best_epoch": self.best_epoch,
            "final_val_top1": final.get("val_top1"), "final_ema_top1": final.get("ema_top1"),
            "final_val_loss": final.get("val_loss"), "final_train_loss": final.get("train_loss"),
            "val_count": final.get("val_count"), "skipped_steps": self.bad_steps_total,
            "bad_images": self.data.bad_images, "wall_time_s": time.time() - start_time,
            "stopped_early": stopped_early, "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "history": history, "plots": plots,
            "last_checkpoint": str(self.run_dir / "last.safetensors"),
            "best_checkpoint": str(self.run_dir / "best.safetensors") if self.best_top1 >= 0 else None,
        }

    def _plots(self) -> list[str]:
        try:
            from ..plots import plot_run
        except ImportError:  # the plotting module is optional for a training run
            return []
        try:
            return [str(p) for p in plot_run(self.run_dir)]
        except Exception as e:  # noqa: BLE001 - a figure must never fail a finished run
            print(f"warning: could not draw the run's plots ({type(e).__name__}: {e})", file=sys.stderr)
            return []


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run a training job to completion (resuming if ``cfg.runtime.resume`` says so); returns a summary
    with best/final val top-1, epochs, steps, wall time and the run directory."""
    cfg.validate()
    created = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = dist_mod.setup(cfg.runtime.device)
    try:
        return Trainer(cfg, info).run()
    finally:
        if created:
            dist_mod.cleanup()
