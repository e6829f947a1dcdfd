"""Run logging: ``metrics.jsonl`` (one JSON object per line) and TensorBoard, written by rank 0 only.

Record types (other keys may be added):
  {"type": "step", "epoch", "step", "loss", "lr", "img_per_s", "time"}
  {"type": "epoch", "epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1", "lr", "time"}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write_text


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/Inf; a null loss marks a skipped step
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (a torn last line from a crash is ignored)."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLogger:
    """Appends records to ``metrics.jsonl`` and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            # Records written after the checkpoint we resume from will be produced again: drop them,
            # so the log reads as if the run had never stopped.
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _json_safe(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            kind, step = record["type"], record["step"]
            for k, v in record.items():
                if k not in ("type", "step", "epoch", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tb is not None:
            self.tb.close()
