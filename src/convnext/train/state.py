"""Resumable training state: ``train_state.pt`` written crash-safely, and finding the newest valid one.

``train_state.pt`` holds the model weights, optimizer, scheduler, EMA, grad scaler, RNG states and
the position in the run (epoch, step, batches done in the epoch) as plain tensors and containers,
so ``torch.load(weights_only=True)`` reads it. Every save first hard-links the current file to
``train_state.prev.pt`` (no extra disk space), then replaces ``train_state.pt`` atomically (temp
file + fsync + rename). A kill at any moment therefore leaves at least one complete state, and a
full disk fails the write while the previous files stay intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from ..errors import CheckpointError

STATE_NAME = "train_state.pt"
PREV_NAME = "train_state.prev.pt"
STATE_FORMAT = 1
REQUIRED_KEYS = ("format", "epoch", "epoch_step", "step", "model", "optimizer", "scheduler", "rng")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    current, prev = run_dir / STATE_NAME, run_dir / PREV_NAME
    if current.exists():
        link_tmp = run_dir / f".{PREV_NAME}.link"
        if link_tmp.exists():
            link_tmp.unlink()
        try:
            os.link(current, link_tmp)
        except OSError:  # filesystems without hard links: keep no backup rather than fail the run
            link_tmp = None
        if link_tmp is not None:
            os.replace(link_tmp, prev)
    return atomic_write(current, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_train_state(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / STATE_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no training state to resume from; use --resume auto or a run directory")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn, truncated or hostile files all mean "unusable"
        raise CheckpointError(f"{p}: training state is unreadable ({type(e).__name__}); "
                              "resume from another checkpoint or start a new run") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{p}: not a convnext training state (missing {missing}); start a new run")
    return state


def find_resume_state(run_dir: str | os.PathLike, map_location="cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest (highest step) readable state in ``run_dir``; None when there is none."""
    found = []
    for name in (STATE_NAME, PREV_NAME):
        p = Path(run_dir) / name
        if not p.is_file():
            continue
        try:
            found.append((p, load_train_state(p, map_location)))
        except CheckpointError:  # a torn write: the other state may still be good (RunDir says which it used)
            continue
    if not found:
        return None
    return max(found, key=lambda item: item[1]["step"])
