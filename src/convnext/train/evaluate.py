"""Evaluation, one implementation for training's validation and ``convnext eval``.

``evaluate`` is the metric loop (loss, top-1, top-5, optional confusion matrix, summed over ranks);
``validate`` is training's per-epoch use of it; ``evaluate_checkpoint`` scores a saved model on a dataset
with the checkpoint's own preprocessing (``convnext eval``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_model, read_quantization
from ..data.assembly import eval_dataset, load_eval_split, make_loader
from ..data.datasets import DATASETS, split_holdout
from ..data.folders import print_warnings_as_lines
from ..errors import UsageError, check_choice
from ..files import check_output_path
from ..infer.fuse import PRECISIONS, optimize_for_inference
from ..infer.quantize import calibration_images as calibration_images_of
from ..infer.quantize import int8_device, load_quantized, quantize
from ..infer.tta import TTA_MODES, with_tta
from ..models import ConvNeXt
from ..runtime import autocast, resolve_device
from . import distributed as dist_mod


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none", num_classes: int | None = None,
             dist_info: dist_mod.DistInfo | None = None, channels_last: bool = False,
             confusion: bool = False, predictions: bool = False) -> dict[str, Any]:
    """Loss, top-1 and top-5 (percent) over every sample of ``loader``, summed over ranks.

    With ``confusion=True`` also a (num_classes x num_classes) count matrix, rows = true class; with
    ``predictions=True`` the top-1 class of every sample in loader order (this process's samples only).
    """
    dist_info = dist_info or dist_mod.DistInfo(device=device)
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    k = num_classes or 0
    matrix = torch.zeros(k, k, dtype=torch.float64) if confusion else None
    top1_classes = []
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
        if predictions or matrix is not None:
            first = top[:, 0].cpu()
        if predictions:
            top1_classes.append(first)
        if matrix is not None:
            idx = labels.cpu() * k + first
            matrix += torch.bincount(idx, minlength=k * k).reshape(k, k).double()
    totals = dist_mod.all_reduce_sum([loss_sum, correct1, correct5, count], dist_info).tolist()
    if matrix is not None and dist_info.enabled:
        matrix = dist_mod.all_reduce_sum(matrix, dist_info)
    model.train(was_training)
    n = max(totals[3], 1.0)
    out = {"loss": totals[0] / n, "top1": 100 * totals[1] / n, "top5": 100 * totals[2] / n, "count": int(totals[3])}
    if matrix is not None:
        out["confusion"] = matrix.long()
    if predictions:
        out["predictions"] = torch.cat(top1_classes) if top1_classes else torch.empty(0, dtype=torch.long)
    return out


def inference_copy(model: nn.Module, device: torch.device, amp: str) -> nn.Module:
    """What validation runs for ``model``: on the CPU in fp32, its fused inference copy (``optimize_for_inference``:
    norms folded into the convs, blocks as GEMMs on the NHWC view; the model is not changed), equal to float
    rounding and ~1.85x faster there (the demo's network on its 10,000 validation images, 3 interleaved rounds:
    2.8 s -> 1.5 s, ~10 s of the demo's 3 minutes); elsewhere the model itself (a GPU's gain is not measured)."""
    if device.type != "cpu" or amp != "none" or not isinstance(model, ConvNeXt):
        return model
    with warnings.catch_warnings():  # "nothing to fold": the model comes back as it is, which is what we want
        warnings.simplefilter("ignore", RuntimeWarning)
        return optimize_for_inference(model, precision="fp32")


def validate(model: nn.Module, ema_model: nn.Module | None, loader, device: torch.device, amp: str,
             dist_info: dist_mod.DistInfo, channels_last: bool = False) -> dict[str, Any]:
    """Training's end-of-epoch validation of ``model`` and, if given, its EMA (each as ``inference_copy``): the
    val_* and ema_* fields of the epoch record."""
    raw = evaluate(inference_copy(model, device, amp), loader, device, amp, dist_info=dist_info,
                   channels_last=channels_last)
    ema = (evaluate(inference_copy(ema_model, device, amp), loader, device, amp, dist_info=dist_info,
                    channels_last=channels_last) if ema_model is not None else None)
    return {"val_loss": raw["loss"], "val_top1": raw["top1"], "val_top5": raw["top5"],
            "ema_top1": ema["top1"] if ema else None, "ema_val_loss": ema["loss"] if ema else None,
            "val_count": raw["count"]}


def evaluate_checkpoint(checkpoint: str | os.PathLike, *, model_name: str | None = None, arch: dict | None = None,
                        dataset: str | None = None, data_root: str | os.PathLike | None = None, split: str = "val",
                        batch_size: int = 64, workers: int = 2, limit: int = 0, device: str = "auto", amp: str = "none",
                        fast: bool = False, confusion_png: str | os.PathLike | None = None,
                        precisions: Sequence[str] = (), calibration: str | os.PathLike | None = None,
                        calibration_images: int = 512, tta: str = "none", holdout: int = 0) -> dict[str, Any]:
    """Score ``checkpoint`` on one split of ``dataset`` (``limit`` samples of a fixed shuffle, 0 = all);
    ``dataset=None`` takes the one the checkpoint was trained on when its name is enough to load it (Fashion-MNIST),
    else folder.

    Returns loss, top-1, top-5, count, per-class accuracy, the confusion matrix (rows = true class),
    the class names and the unreadable files skipped; with ``confusion_png`` also draws the matrix there.
    ``fast`` evaluates the inference-optimised copy (``optimize_for_inference``) instead of the model.

    ``precisions`` (e.g. ``("fp32", "bf16", "int8")``): score the inference model in each precision; the
    main fields are the first one's, and ``precisions`` lists every one with its top-1 agreement with the
    first. ``int8`` quantizes with ``calibration`` (image folder or dataset name; its training split), never
    with the evaluated images. An INT8 file (``convnext quantize``) is evaluated as it is, on CPU.

    ``tta="flip"`` scores every network through ``infer.tta.FlipAverage`` (each image and its mirror).
    ``holdout=N`` scores the N training images a run with ``data.holdout N`` validated on (the same fixed cut,
    ``split_holdout``), so a choice such as ``tta`` is made on them, not on the test split.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be >= 1")
    if limit < 0:
        raise UsageError(f"--limit {limit} must be >= 0 (0 = every image)")
    if workers < 0:
        raise UsageError(f"--workers {workers} must be >= 0 (0 = load in the main process)")
    if calibration_images < 1:
        raise UsageError(f"--calibration-images {calibration_images} must be >= 1")
    check_choice("--tta", tta, TTA_MODES)
    if holdout < 0:
        raise UsageError(f"--holdout {holdout} must be >= 0 (0 = the whole split)")
    if holdout and split != "train":
        raise UsageError(f"--holdout {holdout} cuts its images from the train split; use --split train (not {split})")
    if confusion_png:
        check_output_path(confusion_png)
    quantized = read_quantization(checkpoint) is not None
    if quantized:
        if precisions or fast or amp != "none":
            raise UsageError(f"{checkpoint} is an INT8 model: it runs as it is, without --precision, --fast or --amp")
    dev = int8_device(device) if quantized else resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    for p in precisions:
        check_choice("--precision", p, (*PRECISIONS, "int8"))
    if "int8" in precisions and calibration is None:
        raise UsageError("--precision int8 needs --calibration DATA (images like the model's inputs, not the "
                         "evaluated ones), or evaluate an INT8 file made by convnext quantize")
    if quantized:
        model, info = load_quantized(checkpoint)
    else:
        model, info = load_model(checkpoint, map_location=dev, model_name=model_name, **(arch or {}))
    pre = info.preprocess
    if dataset is None:  # the checkpoint's own dataset where its name is enough to load it again
        trained_on = info.train.get("dataset")
        dataset = trained_on if trained_on in DATASETS and DATASETS[trained_on].standalone else "folder"
    with print_warnings_as_lines():
        ds = load_eval_split(dataset, split, data_root, pre.channels)
    if holdout:  # the images training's data.holdout validated on, classes and all
        ds = split_holdout(ds, holdout)[1]
    bad_files = [{"path": str(b.path), "reason": b.reason} for b in getattr(ds, "bad_files", [])]
    classes = list(ds.classes)
    if model.cfg.num_classes != len(classes):
        raise UsageError(f"the model has {model.cfg.num_classes} classes but the dataset has {len(classes)}; "
                         "evaluate on the dataset it was trained for")
    if info.class_names is not None and list(info.class_names) != classes:
        raise UsageError(f"the checkpoint's classes {info.class_names[:4]}... differ from the dataset's "
                         f"{classes[:4]}...; evaluate on the dataset it was trained for")
    ds = eval_dataset(ds, pre, limit)
    loader = make_loader(ds, dist_mod.ShardedSampler(len(ds), shuffle=False), batch_size, workers, dev, False)

    def score(net: nn.Module, amp: str) -> dict[str, Any]:
        # the confusion matrix is the first run's (the reported one); predictions only to compare precisions
        return evaluate(net, loader, dev, amp, num_classes=len(classes), dist_info=dist_mod.DistInfo(device=dev),
                        confusion=not runs, predictions=bool(precisions))

    runs = []
    for p in precisions:
        if p == "int8":
            net = quantize(model, calibration_images_of(calibration, pre, calibration_images, data_root))
        else:
            net = optimize_for_inference(model, precision=p, device=dev)
        runs.append((net.precision, score(with_tta(net, tta), "none")))
    if not runs:
        net = optimize_for_inference(model, device=dev) if fast else model
        runs.append((getattr(net, "precision", None), score(with_tta(net, tta), amp)))
    first_precision, result = runs[0]
    if precisions:
        reference = result["predictions"]
        result["precisions"] = [{"precision": name, "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
                                 "top1_agreement": 100.0 * (r.pop("predictions") == reference).float().mean().item()}
                                for name, r in runs]
    if first_precision is not None:
        result["precision"] = first_precision
    result.update(tta=tta, split=split, holdout=holdout)
    matrix = result.pop("confusion")
    per_class = []
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        per_class.append({"class": name, "count": total,
                          "top1": 100.0 * int(matrix[i, i]) / total if total else None})
    result.update(per_class=per_class, confusion_matrix=matrix.tolist(), classes=classes, bad_images=len(bad_files),
                  bad_files=bad_files)
    if confusion_png:
        from ..plots import plot_confusion_matrix  # matplotlib, only when a figure is asked for

        result["confusion_png"] = str(plot_confusion_matrix(matrix.numpy(), classes, confusion_png))
    return result


__all__ = ["evaluate", "evaluate_checkpoint", "validate"]
