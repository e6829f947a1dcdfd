"""The run directory ``<runtime.out>/<run_name>``: whether a run starts fresh or resumes there, and the
files it keeps there (config.yaml, metrics.jsonl + tb/, best/last/last_ema.safetensors, train_state.pt, figures).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import ModelInfo, save_model
from ..errors import UsageError
from .config import TrainConfig, resume_conflicts
from .logging import RunLogger, read_metrics
from .state import PREV_NAME, STATE_NAME, find_resume_state, load_train_state, save_train_state


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the previous one is intact."""


class RunDir:
    """One run's directory and its resume policy (``RunDir.resolve``)."""

    def __init__(self, path: Path, resumed_from: Path | None = None, restart: bool = False) -> None:
        self.path = path
        self.resumed_from = resumed_from  # the training state this run continues; None for a fresh run
        # A fresh run here replaces the log an earlier run left (--runtime.overwrite, or --resume auto
        # with nothing to resume, e.g. killed before its first checkpoint).
        self.restart = restart
        self.metrics = path / "metrics.jsonl"
        self.best, self.last = path / "best.safetensors", path / "last.safetensors"
        self.last_ema = path / "last_ema.safetensors"  # the EMA's weights at the last save (runs with EMA)

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> tuple["RunDir", dict[str, Any] | None]:
        """The run directory and the state to resume from (None for a fresh run). Writes nothing."""
        t = cfg.runtime
        path = Path(t.out) / (t.run_name or f"{cfg.model.name}-{cfg.data.dataset}")
        resume_from, state = None, None
        if t.resume == "auto":
            found = find_resume_state(path)
            if found is not None:
                resume_from, state = found
                if resume_from.name == PREV_NAME and (path / STATE_NAME).exists():
                    print(f"warning: {path / STATE_NAME} is damaged; resuming from {PREV_NAME} (step "
                          f"{state['step']}) instead", file=sys.stderr)
            elif any((path / n).exists() for n in (STATE_NAME, PREV_NAME)):
                # starting over here would overwrite the run's best/last checkpoints
                raise UsageError(f"{path}: --resume auto found no readable {STATE_NAME} (damaged); pass --resume "
                                 "PATH to another training state, or --runtime.overwrite true to start over")
        elif t.resume:
            resume_from = Path(t.resume)
            state = load_train_state(resume_from)
        if state is not None and state.get("config") is not None:
            conflicts = resume_conflicts(state["config"], cfg)
            if conflicts:
                raise UsageError(f"{resume_from}: cannot resume with a different config ({'; '.join(conflicts)}); "
                                 "rerun with the run's own values (its config.yaml), or start a new run with "
                                 "--runtime.run_name NEW")
        # --resume auto with nothing to resume (e.g. killed before the first checkpoint) starts over
        if state is None and not t.overwrite and t.resume != "auto" and (path / "metrics.jsonl").exists():
            raise UsageError(f"{path}: a run already exists there; pass --resume auto to continue it, "
                             "--runtime.run_name NEW for a new run, or --runtime.overwrite true to start over")
        return cls(path, resume_from, restart=t.overwrite or t.resume == "auto"), state

    def prepare(self, cfg: TrainConfig) -> None:
        """Create the directory and write config.yaml (rank 0 only)."""
        self.path.mkdir(parents=True, exist_ok=True)
        # temp files of writes that a crash interrupted (the real files are intact)
        for stray in self.path.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: TrainConfig) -> None:
        """config.yaml: the run's config (again when a time budget fixes its epochs; rank 0 only)."""
        cfg.save(self.path / "config.yaml")

    def open_log(self, enabled: bool, tensorboard: bool, step: int) -> RunLogger:
        """The run's logger. Resuming, records after ``step`` (about to be produced again) are dropped;
        a fresh run that replaces an earlier one starts an empty metrics.jsonl."""
        if enabled and self.resumed_from is None and self.restart:
            self.metrics.unlink(missing_ok=True)
        return RunLogger(self.path, enabled=enabled, tensorboard=tensorboard,
                         resume_step=step if self.resumed_from is not None else None)

    def save(self, state: dict[str, Any], last: tuple[nn.Module, ModelInfo],
             best: tuple[nn.Module, ModelInfo] | None = None,
             last_ema: tuple[nn.Module, ModelInfo] | None = None) -> None:
        """Write best.safetensors (if given), last.safetensors, last_ema.safetensors (if given), then
        train_state.pt.

        train_state.pt goes last because it is what --resume trusts: a crash before it is written
        resumes from the previous state, which replays the steps and rewrites the weights files.
        """
        had_checkpoint = (self.path / STATE_NAME).exists()
        try:
            if best is not None:
                save_model(best[0], self.best, best[1])
            save_model(last[0], self.last, last[1])
            if last_ema is not None:
                save_model(last_ema[0], self.last_ema, last_ema[1])
            save_train_state(self.path, state)
        except Exception as e:  # noqa: BLE001 - a full disk comes as OSError, RuntimeError (torch) or SafetensorError
            if isinstance(e, OSError) and e.strerror:
                reason = e.strerror
            else:
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            try:
                reason += f"; {shutil.disk_usage(self.path).free / 1e6:.1f} MB free there"
            except OSError:
                pass
            kept = ("the previous checkpoint is intact" if had_checkpoint else
                    "no checkpoint of this run existed yet, so the rerun starts over")
            raise CheckpointWriteError(f"could not write a checkpoint in {self.path} ({reason}); {kept}: free disk "
                                       "space, then rerun with --resume auto") from e

    def what_is_kept(self) -> str:
        """For a stopped run's message: the last good checkpoint, or that there is none yet."""
        if (self.path / STATE_NAME).exists():
            return f"the last good checkpoint is kept in {self.path}"
        return f"no checkpoint was written yet in {self.path}"

    def last_epoch_record(self) -> dict[str, Any]:
        """The last end-of-epoch record in metrics.jsonl ({} if none)."""
        done = [r for r in read_metrics(self.metrics) if r.get("type") == "epoch"]
        return done[-1] if done else {}

    def draw_plots(self) -> list[str]:
        """The run's figures from metrics.jsonl; [] when matplotlib is missing or drawing fails."""
        try:
            from ..plots import plot_run  # matplotlib is optional for a training run
        except ImportError:
            return []
        try:
            return [str(p) for p in plot_run(self.path)]
        except Exception as e:  # noqa: BLE001 - a figure must never fail a finished run
            print(f"warning: could not draw the run's plots ({type(e).__name__}: {e})", file=sys.stderr)
            return []


__all__ = ["CheckpointWriteError", "RunDir"]
