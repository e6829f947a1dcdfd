"""Gradient (activation) checkpointing: blocks that keep only their input for backward and run again there.

A training step keeps every intermediate activation of every block until backward needs it. In a ConvNeXt block
those are the depthwise conv's and the norm's outputs and the 4x wider hidden activations before and after GELU,
so a step's memory grows with the batch, the image size and the depth. ``set_grad_checkpointing(model)`` makes
each residual block keep only its input and run its forward once more during backward
(``torch.utils.checkpoint``, non-reentrant): about one more forward pass of compute for most of the activation
memory, so larger batches, images or models fit a GPU. timm calls this ``model.set_grad_checkpointing()``
(``--grad-checkpointing``); here it is ``--runtime.grad_checkpointing true``.

Applied from outside the model, like ``accelerate.py``'s swaps: each Block's class becomes a subclass whose forward
wraps the block's own, so parameters, state dict, outputs and gradients stay exactly those of the plain model. The
second run of a block repeats its random draws (``checkpoint`` restores the RNG state for it, so stochastic depth
drops the same samples) and leaves BatchNorm's running statistics as the first run left them (they are put back
after it), so a checkpointed run trains bit for bit like a plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.convnext import Block


@contextlib.contextmanager
def _running_stats_kept(block: nn.Module) -> Iterator[None]:
    """Put back the BatchNorm buffers of ``block`` after the block's second (recomputing) forward, which would
    otherwise count its batch twice in the running statistics."""
    norms = [m for m in block.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, {name: buf.clone() for name, buf in m.named_buffers(recurse=False) if buf is not None})
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


class CheckpointedBlock(Block):
    """Mixed in before a Block's own class by ``set_grad_checkpointing``: the block's forward, checkpointed while
    training with gradients on; as it is in eval mode and under ``torch.no_grad`` (validation, the EMA copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if torch.compiler.is_compiling():
            # dynamo takes no context_fn of ours; the compiled backward's recomputation does not repeat the
            # running-statistics update either (tests/test_compile.py compares them with eager's)
            return checkpoint(super().forward, x, use_reentrant=False)
        contexts = lambda: (contextlib.nullcontext(), _running_stats_kept(self))  # noqa: E731 (forward, recompute)
        return checkpoint(super().forward, x, use_reentrant=False, context_fn=contexts)

    def __reduce_ex__(self, protocol):
        # The class is made at run time, so pickle (torch.save(model), a spawned worker) could not find it by name:
        # name the block's own class instead, and make the checkpointed one again where it is unpickled.
        return _checkpointed_instance, (_plain(type(self)),), self.__getstate__()


_CHECKPOINTED: dict[type, type] = {}  # a Block class -> its checkpointed subclass (one per class, reused)


def _checkpointed(cls: type) -> type:
    if cls not in _CHECKPOINTED:
        _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (CheckpointedBlock, cls),
                                  {"__module__": __name__, "__qualname__": f"Checkpointed{cls.__name__}"})
    return _CHECKPOINTED[cls]


def _checkpointed_instance(cls: type) -> nn.Module:
    """An empty checkpointed ``cls`` block for pickle to fill (``CheckpointedBlock.__reduce_ex__``)."""
    return object.__new__(_checkpointed(cls))


def _plain(cls: type) -> type:
    return next(c for c in cls.__mro__[1:] if not issubclass(c, CheckpointedBlock))


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Checkpoint every residual block of ``model`` (any module holding ConvNeXt/roadmap Blocks), in place, or with
    ``enabled=False`` undo it. Returns how many blocks changed.

    Only each block's class changes (to a subclass wrapping its forward, whatever the class was: the plain Block or
    one of ``accelerate.py``'s), so apply it after those swaps; parameters and the state dict stay as built.
    """
    changed = 0
    for block in model.modules():
        if not isinstance(block, Block):
            continue
        checkpointed = isinstance(block, CheckpointedBlock)
        if enabled and not checkpointed:
            block.__class__ = _checkpointed(type(block))
        elif not enabled and checkpointed:
            block.__class__ = _plain(type(block))
        else:
            continue
        changed += 1
    return changed


def is_grad_checkpointing(model: nn.Module) -> bool:
    """Whether any block of ``model`` is checkpointed."""
    return any(isinstance(m, CheckpointedBlock) for m in model.modules())


__all__ = ["CheckpointedBlock", "is_grad_checkpointing", "set_grad_checkpointing"]
