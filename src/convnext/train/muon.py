"""Muon for the hidden layers' weight matrices, AdamW for everything else, as one optimizer (``--opt.optimizer
muon``).

Muon (Jordan et al., 2024) takes SGD's Nesterov momentum of a weight matrix and replaces it by the nearest
semi-orthogonal matrix (five Newton-Schulz iterations), so every direction of the update moves at the same rate;
on small-image benchmarks it reaches a given accuracy in fewer steps than AdamW or SGD. It is meant for the
linear maps inside the network. The stem (it sees pixels), the classifier head, the depthwise kernels (a
k x k filter per channel, no map between channels), norms, biases and layer scale stay with AdamW, as in Muon's
own recipes.

The arithmetic is ``torch.optim.Muon``'s, with Moonshot's update scaling (``adjust_lr_fn="match_rms_adamw"``:
an update of the same RMS as AdamW's) so both halves share one learning rate, one schedule and one weight decay.
``MatrixMuon`` differs from it in two ways:

- ``torch.optim.Muon`` takes only 2-D parameters. A convolution kernel (out, in, kh, kw) is a matrix too, mapping
  in x kh x kw inputs to out outputs; ``MatrixMuon`` updates that matrix as a view of the kernel.
- ``torch.optim.Muon`` runs the Newton-Schulz iterations in bf16, which a CPU without native bf16 emulates: for the
  30-minute recipe's eight matrices, 399 ms a step on the AVX2 development machine against 21 ms in fp32, where the
  whole rest of the step takes ~180 ms. ``MatrixMuon`` iterates in bf16 on CUDA, as torch does, and in fp32 on
  the CPU; ``ns_dtype`` overrides that. With bf16 it gives torch.optim.Muon's results bit for bit (tested).
- Under data parallelism every process holds the same averaged gradients, so each would orthogonalise every
  matrix. With ``distributed=True`` each process orthogonalises a share of them (split by their iterations' cost)
  and one all-reduce of the results, zeros elsewhere, hands every process all of them: the same numbers, bit for
  bit (x + 0 is x), for ~1/N of the iterations' time (Muon's distributed form).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

def takes_muon(name: str, param: nn.Parameter) -> bool:
    """Whether Muon updates ``param``: a weight mapping several input channels to outputs inside the network (the
    1x1 convs, the downsampling convs, the roadmap's dense k x k convs); not the stem or the head."""
    if param.ndim < 2 or param.shape[1] < 2:
        return False  # vectors (norms, biases, layer scale); depthwise kernels (one input channel per output)
    return not (name.startswith("stem.") or name.startswith("head."))


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def as_matrix(t: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``t`` as a (out, everything else) matrix that shares its memory. In channels_last the columns are in
    (kh, kw, in) order rather than (in, kh, kw): a permutation of columns, which orthogonalisation commutes with."""
    if layout is torch.channels_last:
        t = t.permute(0, 2, 3, 1)
    return t.view(t.shape[0], -1)


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: ``g`` with its singular values pushed towards 1 (to ~0.7-1.2, which
    Muon's authors found as good as exactly 1), computed in ``dtype``; the order of operations is torch.optim.Muon's."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = g.size(0) > g.size(1)
    if wide:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1 (not in place: x may be the momentum)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


def orthogonalize_flops(rows: int, cols: int, steps: int) -> int:
    """The multiply-adds x 2 of ``orthogonalize`` on a (rows, cols) matrix: per iteration the short side's Gram
    matrix, its square, and that times the matrix."""
    short, long = min(rows, cols), max(rows, cols)
    return steps * (4 * short * short * long + 2 * short ** 3)


def share_out(costs: list[int], processes: int) -> list[int]:
    """Which process orthogonalises each matrix: the costliest first, each to the process with the least work so
    far (the lowest rank on a tie), so every process computes the same split."""
    load, owner = [0] * processes, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner[i] = min(range(processes), key=lambda r: (load[r], r))
        load[owner[i]] += costs[i]
    return owner


def update_scale(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """The factor on the lr for an (A, B) matrix, by torch.optim.Muon's ``adjust_lr_fn`` choices."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))  # Keller Jordan's
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))  # Moonshot's: the RMS of an AdamW update
    return math.sqrt(rows / cols)  # "spectral_unclamped"


def _fits(x: float, t: torch.Tensor) -> bool:
    """Whether the scalar ``x`` is finite in ``t``'s dtype."""
    return abs(x) <= torch.finfo(t.dtype).max


def _overflowed(x: float, t: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to ``t``'s dtype as a 0-d tensor: +-inf where it is out of range."""
    return torch.tensor(x, dtype=torch.float64).to(device=t.device, dtype=t.dtype)


def _closure_loss(closure):
    """The loss of an optimizer step's optional closure, evaluated with gradients on (torch.optim's convention)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class MatrixMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also takes convolution kernels, each updated as the matrix ``as_matrix`` gives,
    and iterates in ``ns_dtype`` (None: bf16 on CUDA, fp32 elsewhere). The momentum buffer keeps the parameter's
    shape, so checkpoints hold it like any other optimizer state. With ``distributed`` and an initialised process
    group of several processes, every process of it must call ``step`` together: each orthogonalises its share."""

    def __init__(self, params, ns_dtype: torch.dtype | None = None, distributed: bool = False, **hyper) -> None:
        # Muon's own constructor checks the hyperparameters and fills in its defaults; only its check that every
        # parameter is 2-D is left out, since _init_group hands over matrices.
        defaults = torch.optim.Muon([torch.zeros(2, 2)], **hyper).defaults
        torch.optim.Optimizer.__init__(self, params, defaults)
        self.ns_dtype, self.distributed = ns_dtype, distributed

    def _orthogonalized(self, updates: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        """``orthogonalize`` of each update, computed here or, shared out, across the process group."""
        dtype = self.ns_dtype or (torch.bfloat16 if updates and updates[0].device.type == "cuda" else torch.float32)

        def orth(u):
            return orthogonalize(u, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)

        processes = dist.get_world_size() if self.distributed and dist.is_initialized() else 1
        if processes == 1 or not updates:
            return [orth(u) for u in updates]
        owner = share_out([orthogonalize_flops(*u.shape, group["ns_steps"]) for u in updates], processes)
        mine = dist.get_rank()
        flat = torch.zeros(sum(u.numel() for u in updates), dtype=dtype, device=updates[0].device)
        out, start = [], 0
        for u, who in zip(updates, owner):
            view = flat[start:start + u.numel()].view(u.shape)
            if who == mine:
                view.copy_(orth(u))
            out.append(view)
            start += u.numel()
        dist.all_reduce(flat)  # each entry is one process's result plus zeros: exactly that result
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, momentum = group["lr"], group["momentum"]
            updates = []
            for g, buf in zip(grads, bufs):
                buf.lerp_(g, 1 - momentum)
                updates.append(g.lerp(buf, momentum) if group["nesterov"] else buf)
            for p, update in zip(params, self._orthogonalized(updates, group)):
                decay, alpha = 1 - lr * group["weight_decay"], -lr * update_scale(p.shape, group["adjust_lr_fn"])
                if _fits(decay, p) and _fits(alpha, p):
                    p.mul_(decay)
                    p.add_(update, alpha=alpha)
                else:
                    # An lr past the weights' range (1e300 is inf in float32): torch refuses to convert such a
                    # scalar, so apply it as the 0-d tensor it becomes. The weights go NaN/Inf, as AdamW's do, and
                    # the engine's guard stops the run before any checkpoint holds them.
                    p.mul_(_overflowed(decay, p))
                    p.add_(update * _overflowed(alpha, p))
        return loss

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse or torch.is_complex(p):
                raise RuntimeError("Muon takes dense real parameters only")
            layout = _layout(p)
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = torch.zeros_like(p, memory_format=layout)
            elif _layout(buf) is not layout:  # restored from a run with the other memory format
                buf = buf.contiguous(memory_format=layout)
            state["momentum_buffer"] = buf
            params_with_grad.append(as_matrix(p, layout))
            grads.append(as_matrix(p.grad.contiguous(memory_format=layout), layout))
            muon_momentum_bufs.append(as_matrix(buf, layout))
        return False  # no complex parameters


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two built ones (either may be None): ``muon`` for the matrices, ``adamw`` for the rest.
    Their groups are shared dicts, so a scheduler that sets ``param_groups[i]["lr"]`` drives both."""

    def __init__(self, muon: MatrixMuon | None, adamw: torch.optim.Optimizer | None) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([g for part in self._parts().values() for g in part.param_groups], {})

    def _parts(self) -> dict[str, torch.optim.Optimizer]:
        return {key: part for key, part in (("muon", self.muon), ("adamw", self.adamw)) if part is not None}

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for part in self._parts().values():
            part.step()
        return loss

    def state_dict(self) -> dict:
        parts = self._parts()
        return {key: parts[key].state_dict() if key in parts else None for key in ("muon", "adamw")}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = self._parts()
        if set(state_dict) != {"muon", "adamw"} or {k for k, v in state_dict.items() if v is not None} != set(parts):
            raise ValueError("the optimizer state is not a Muon + AdamW state for this model's parameters")
        for key, part in parts.items():
            part.load_state_dict(state_dict[key])
        # load_state_dict gives each part new group dicts: share them again
        self.param_groups = [g for part in parts.values() for g in part.param_groups]
