"""Classify image files with a trained checkpoint: top-k class names and probabilities per file.

The checkpoint carries its class names and preprocessing, so nothing but the file paths is needed.
Files are decoded on a few threads (PIL releases the GIL while decoding) and run in batches; a file
that cannot be read is reported on its own and does not stop the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import ModelInfo, load_model, read_quantization
from ..data.images import ImageError, collect_images, load_tensor
from ..data.transforms import eval_transform
from ..errors import UsageError, check_choice
from ..preprocess import Preprocess
from ..runtime import resolve_device
from .fuse import optimize_for_inference
from .quantize import QuantizedModel, int8_device, load_quantized
from .tta import TTA_MODES, with_tta


@dataclass
class Prediction:
    """One file's answer: top-k (class name, class index, probability), or the reason it has none."""

    file: str
    classes: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "error": self.error, "predictions": []}
        d["predictions"] = [
            {"rank": r + 1, "class": c, "index": i, "prob": p}
            for r, (c, i, p) in enumerate(zip(self.classes, self.indices, self.probs))
        ]
        return d


def load_for_inference(checkpoint: str | os.PathLike, device: str | torch.device | None = "auto",
                       model_name: str | None = None, arch: dict | None = None) -> tuple[nn.Module, ModelInfo]:
    """``checkpoint.load_model`` on ``device``; ``model_name`` for foreign layouts without our metadata.
    An INT8 file (``convnext quantize``) loads as its ``QuantizedModel``, on the CPU."""
    if read_quantization(checkpoint) is not None:
        int8_device(device)
        return load_quantized(checkpoint)
    device = resolve_device(device)
    model, info = load_model(checkpoint, map_location=device, model_name=model_name, **(arch or {}))
    return model.eval(), info


def make_fast(model: nn.Module) -> nn.Module:
    """The inference engineer's fused eval model (folded norms/layer scale, channels_last), fp32."""
    return optimize_for_inference(model, precision="fp32")


def class_names_for(info: ModelInfo, num_classes: int) -> list[str]:
    names = list(info.class_names or [])
    if names and len(names) != num_classes:
        raise UsageError(
            f"checkpoint lists {len(names)} class names for a {num_classes}-class head; re-save it with matching names"
        )
    return names or [f"class_{i}" for i in range(num_classes)]


class Predictor:
    """A loaded model plus its preprocessing; ``predict_files`` answers file by file, in input order."""

    def __init__(self, model: nn.Module, info: ModelInfo, device: str | torch.device | None = None,
                 batch_size: int = 32, workers: int = 2) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size} must be >= 1")
        if workers < 0:
            raise UsageError(f"--workers {workers} must be >= 0")
        params = list(model.parameters())
        self.device = resolve_device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
        self.model = model.eval()
        self.info = info
        self.pre: Preprocess = info.preprocess
        cfg = info.config
        if self.pre.channels != cfg.in_chans:
            raise UsageError(
                f"checkpoint preprocess has {self.pre.channels} channel(s) but the model takes {cfg.in_chans}; "
                "fix the checkpoint's preprocess metadata"
            )
        if cfg.num_classes < 1:
            raise UsageError("this checkpoint has no classifier head (num_classes=0); it cannot predict classes")
        self.class_names = class_names_for(info, cfg.num_classes)
        self.transform = eval_transform(self.pre)
        self.batch_size = batch_size
        self.workers = workers

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str | torch.device | None = "auto",
                        fast: bool = False, model_name: str | None = None, arch: dict | None = None,
                        precision: str | None = None, tta: str = "none", **kw: Any) -> "Predictor":
        """``fast``: the fused fp32 model; ``precision`` (auto/fp32/bf16/fp16): the fused model in that
        precision. INT8 files run as they are. ``tta="flip"`` averages each image's and its mirror's class
        distributions (``infer.tta``)."""
        check_choice("--tta", tta, TTA_MODES)  # before loading anything
        model, info = load_for_inference(checkpoint, device, model_name, arch)
        if isinstance(model, QuantizedModel):
            if precision not in (None, "int8"):
                raise UsageError(f"{checkpoint} is an INT8 model; it runs without --precision {precision}")
            return cls(with_tta(model, tta), info, device="cpu", **kw)
        if precision is not None:
            model = optimize_for_inference(model, precision=precision, device=resolve_device(device))
        elif fast:
            model = make_fast(model)
        return cls(with_tta(model, tta), info, device=resolve_device(device), **kw)

    def _load(self, path: Path) -> torch.Tensor | ImageError:
        try:
            return load_tensor(path, self.pre, self.transform)
        except ImageError as e:
            return e

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes for a preprocessed batch (N, C, H, W) -> (N, num_classes), on CPU."""
        x = batch.to(self.device, non_blocking=True)
        return self.model(x).float().softmax(dim=-1).cpu()

    def _decoded(self, paths: Sequence[Path]) -> Iterator[tuple[Path, torch.Tensor | ImageError]]:
        if self.workers == 0:
            for p in paths:
                yield p, self._load(p)
            return
        # Decoding runs ahead of the model on the worker threads, but at most two batches ahead:
        # Executor.map would decode a whole directory into memory before the first answer.
        ahead: deque = deque()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for p in paths:
                ahead.append((p, pool.submit(self._load, p)))
                if len(ahead) >= 2 * self.batch_size:
                    q, future = ahead.popleft()
                    yield q, future.result()
            while ahead:
                q, future = ahead.popleft()
                yield q, future.result()

    def predict_inputs(self, inputs: Iterable[str | os.PathLike], topk: int = 5) -> list[Prediction]:
        """Files, directories and globs -> one Prediction per image; inputs matching nothing become errors."""
        paths, problems = collect_images(inputs)
        results = [Prediction(text, error=f"{text}: {reason}") for text, reason in problems]
        return results + list(self.predict_files(paths, topk))

    def predict_files(self, paths: Iterable[str | os.PathLike], topk: int = 5) -> Iterator[Prediction]:
        """Yield one Prediction per path, in order, as soon as its batch is done."""
        if topk < 1:
            raise UsageError(f"--topk {topk} must be >= 1")
        k = min(topk, len(self.class_names))
        pending: list[tuple[Path, torch.Tensor | ImageError]] = []

        def flush() -> Iterator[Prediction]:
            good = [(p, t) for p, t in pending if isinstance(t, torch.Tensor)]
            probs = self.probabilities(torch.stack([t for _, t in good])) if good else None
            rows = iter(range(len(good)))
            for p, t in pending:
                if isinstance(t, ImageError):
                    yield Prediction(os.fspath(p), error=str(t))
                    continue
                top = probs[next(rows)].topk(k)
                idx = top.indices.tolist()
                yield Prediction(os.fspath(p), [self.class_names[i] for i in idx], idx, top.values.tolist())
            pending.clear()

        for item in self._decoded([Path(p) for p in paths]):
            pending.append(item)
            if sum(isinstance(t, torch.Tensor) for _, t in pending) >= self.batch_size:
                yield from flush()
        if pending:
            yield from flush()


def predict(checkpoint: str | os.PathLike, inputs: Iterable[str | os.PathLike], topk: int = 5,
            batch_size: int = 32, device: str | torch.device | None = "auto", fast: bool = False,
            workers: int = 2, model_name: str | None = None, tta: str = "none") -> list[Prediction]:
    """Classify files/directories/globs with a checkpoint (see ``Predictor.predict_inputs``)."""
    inputs = list(inputs)
    check_inputs(inputs)
    predictor = Predictor.from_checkpoint(checkpoint, device=device, fast=fast, model_name=model_name,
                                          batch_size=batch_size, workers=workers, tta=tta)
    return predictor.predict_inputs(inputs, topk)


def check_inputs(inputs: Iterable[str | os.PathLike]) -> None:
    """Fail before loading a model when no input names any image at all."""
    paths, problems = collect_images(inputs)
    if not paths:
        reasons = "; ".join(f"{text}: {why}" for text, why in problems) or "no inputs given"
        raise UsageError(f"no images to classify ({reasons}); pass image files, directories or glob patterns")


def results_json(results: Sequence[Prediction], checkpoint: str | os.PathLike, info: ModelInfo | None = None,
                 topk: int | None = None) -> dict[str, Any]:
    """The ``--json`` document: stable keys, one entry per input in order."""
    return {
        "checkpoint": os.fspath(checkpoint),
        "model": info.name if info else None,
        "topk": topk,
        "num_ok": sum(r.ok for r in results),
        "num_errors": sum(not r.ok for r in results),
        "results": [r.to_dict() for r in results],
    }


__all__ = ["Prediction", "Predictor", "check_inputs", "class_names_for", "load_for_inference", "make_fast", "predict",
           "results_json"]
