"""optimize_for_inference: an equivalent, eval-only ConvNeXt that runs faster.

Exact rewrites (outputs equal the original's within float rounding):

- BatchNorm after a conv is folded into that conv (ResNet-50 and the BN roadmap steps).
- A norm in front of a padding-free conv (LN -> 1x1 pwconv1, LN -> 2x2 downsample conv, head LN -> fc) gives
  its per-channel affine (LN's weight/bias, or all of an eval BatchNorm) to that conv: the norm itself stays,
  without affine. Convs with zero padding only, because a padded border would see 0, not the shifted bias.
- Layer scale ``gamma`` is folded into the last conv of the block (or into the affine of a norm after it).
- Weights go to channels_last, so the NHWC view of every activation is contiguous and LayerNorm's permutes
  are free.
- ConvNeXt blocks become ``FastBlock``: dwconv, then LayerNorm and both pointwise convs as GEMMs on the
  (N*H*W, C) view of the NHWC activation. On CPU the GEMMs run as oneDNN inner products with GELU fused into
  the first and the residual add fused into the second (``torch.ops.mkldnn._linear_pointwise``), which is
  where timm's eager block spends its time: a separate GELU pass and memory copies.

Precision (fp32, bf16, fp16, autocast or full cast) and ``torch.compile`` (inductor with frozen weights) are
options of the returned ``InferenceModel``. ``precision="auto"`` picks bf16 on CPUs that multiply in bf16
natively (AVX512-BF16 or AMX, and oneDNN not capped below them) and fp32 elsewhere: without those units bf16
is emulated and several times slower than fp32, so asking for it there warns with the measured slowdown.
"""

from __future__ import annotations

import copy
import contextlib
import functools
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convnext import Block, ConvNeXt, Downsample, Head, Stem
from ..runtime import DTYPES, autocast

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------------------- folding helpers


class ChannelNorm(nn.Module):
    """LayerNorm over channels of an NCHW tensor with its affine folded away (what a folded LN becomes)."""

    def __init__(self, num_channels: int, eps: float) -> None:
        super().__init__()
        self.num_channels, self.eps = num_channels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), None, None, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class Folded(nn.Identity):
    """Where a norm used to be before it was folded into a neighbouring conv."""


def _norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (scale, shift) that the norm applies after normalising, as a y = scale * x + shift map.

    For LayerNorm that is its weight/bias (the normalisation itself stays); for an eval BatchNorm it is the
    whole layer (running statistics included), so nothing remains.
    """
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        return norm.weight, norm.bias
    return None


def _norm_without_affine(norm: nn.Module) -> nn.Module:
    if isinstance(norm, nn.BatchNorm2d):
        return Folded()
    return ChannelNorm(norm.normalized_shape[0], norm.eps)


def _set_weight_bias(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    layer.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    layer.bias = None if bias is None else nn.Parameter(bias.detach().contiguous(), requires_grad=False)


def fold_norm_into_previous(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """conv -> BN(eval) becomes one conv: scale each output filter, shift the bias."""
    scale, shift = _norm_affine(norm)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    _set_weight_bias(conv, conv.weight * scale.view(-1, 1, 1, 1), bias * scale + shift)


def fold_affine_into_next(scale: torch.Tensor, shift: torch.Tensor, layer: nn.Module) -> None:
    """(scale * x + shift) -> conv/linear becomes conv'/linear' on x: scale the input channels, and add what
    the shift contributes through every kernel tap to the bias (exact because the layer has no padding)."""
    w = layer.weight
    view = (1, -1) + (1,) * (w.ndim - 2)
    bias = layer.bias if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    extra = (w * shift.view(view)).sum(dim=tuple(range(1, w.ndim)))
    _set_weight_bias(layer, w * scale.view(view), bias + extra)


def _padding_free(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    if not isinstance(layer, nn.Conv2d):
        return False
    return layer.padding == "valid" or (isinstance(layer.padding, tuple) and all(p == 0 for p in layer.padding))


@dataclass
class FoldReport:
    """What optimize_for_inference did to one model (counts per rewrite)."""

    bn_into_conv: int = 0
    norm_affine_into_conv: int = 0
    gamma_into_conv: int = 0
    gamma_into_norm: int = 0
    head_norm_into_fc: int = 0
    fast_blocks: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def folds(self) -> int:
        return (self.bn_into_conv + self.norm_affine_into_conv + self.gamma_into_conv + self.gamma_into_norm
                + self.head_norm_into_fc)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("bn_into_conv", "norm_affine_into_conv", "gamma_into_conv",
                                             "gamma_into_norm", "head_norm_into_fc", "fast_blocks")}


# ----------------------------------------------------------------------------------------- per-module folds


def _fold_conv_norm_pairs(seq: nn.Sequential, report: FoldReport) -> None:
    """Stem / shortcut: Sequential(conv, BN, ...) -> conv with BN folded."""
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        conv, norm = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            fold_norm_into_previous(conv, norm)
            seq._modules[b] = Folded()
            report.bn_into_conv += 1


def _fold_downsample(ds: Downsample, report: FoldReport) -> None:
    affine = _norm_affine(ds.norm)
    if affine is not None and _padding_free(ds.conv):
        fold_affine_into_next(*affine, ds.conv)
        ds.norm = _norm_without_affine(ds.norm)
        report.bn_into_conv += isinstance(ds.norm, Folded)
        report.norm_affine_into_conv += isinstance(ds.norm, ChannelNorm)


def _convs_and_norms(block: Block) -> list[tuple[str, str]]:
    """(conv, norm after it) attribute names of a block, in forward order."""
    first, second = ("dwconv", "pwconv1") if block.dwconv_first else ("pwconv1", "dwconv")
    return [(first, "norm" if block.single_norm else "norm1"), (second, "norm2"), ("pwconv2", "norm3")]


def _fold_block(block: Block, report: FoldReport) -> None:
    pairs = _convs_and_norms(block)
    for conv, norm in pairs:  # BN after a conv: into that conv
        if isinstance(getattr(block, norm), nn.BatchNorm2d):
            fold_norm_into_previous(getattr(block, conv), getattr(block, norm))
            setattr(block, norm, Folded())
            report.bn_into_conv += 1
    # LN -> (no activation) -> padding-free conv: the LN's affine into that conv. Only the first norm can
    # qualify: an activation always follows the second conv.
    (_, first_norm), (second_conv, _) = pairs[0], pairs[1]
    affine = _norm_affine(getattr(block, first_norm))
    if affine is not None and isinstance(block.act1, nn.Identity) and _padding_free(getattr(block, second_conv)):
        fold_affine_into_next(*affine, getattr(block, second_conv))
        setattr(block, first_norm, _norm_without_affine(getattr(block, first_norm)))
        report.norm_affine_into_conv += 1
    if block.gamma is not None:
        gamma = block.gamma.detach()
        if isinstance(block.norm3, nn.LayerNorm) and block.norm3.weight is not None:
            block.norm3.weight = nn.Parameter(block.norm3.weight.detach() * gamma, requires_grad=False)
            block.norm3.bias = nn.Parameter(block.norm3.bias.detach() * gamma, requires_grad=False)
            report.gamma_into_norm += 1
        else:  # no norm after the last conv, or a BN already folded into it
            conv = block.pwconv2
            _set_weight_bias(conv, conv.weight * gamma.view(-1, 1, 1, 1), None if conv.bias is None else conv.bias * gamma)
            report.gamma_into_conv += 1
        block.gamma = None
    if isinstance(block.shortcut, nn.Sequential):
        _fold_conv_norm_pairs(block.shortcut, report)


def _fold_head(head: Head, report: FoldReport) -> None:
    affine = _norm_affine(head.norm) if isinstance(head.norm, nn.LayerNorm) else None
    if affine is None:
        return
    if isinstance(head.fc, nn.Linear):
        fold_affine_into_next(*affine, head.fc)
        head.norm = _norm_without_affine(head.norm)
        report.head_norm_into_fc += 1


# ----------------------------------------------------------------------------------------- fast block


@functools.lru_cache(maxsize=None)
def _onednn_linear_ok(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run oneDNN inner products with fused post-ops in `dtype`, exactly."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b, s = (torch.randn(shape, generator=g).to(dtype) for shape in ((5, 8), (6, 8), (6,), (5, 6)))
        ref = F.linear(x.float(), w.float(), b.float())
        act = op(x, w, b, "gelu", [], "none").float()
        add = op.binary(x, s, w, b, "add").float()
        tol = 1e-5 if dtype == torch.float32 else 5e-2
        return bool(torch.allclose(act, F.gelu(ref), atol=tol, rtol=tol)
                    and torch.allclose(add, ref + s.float(), atol=tol, rtol=tol))
    except (RuntimeError, NotImplementedError):
        return False


def _tracing() -> bool:
    """Inside jit tracing, torch.compile/export or ONNX export: stay with standard ops they understand."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


class FastBlock(nn.Module):
    """A folded ConvNeXt block: dwconv -> [LN] -> GEMM + act -> GEMM + residual, GEMMs on the NHWC view.

    Weights are those of the folded Block (LN affine inside pwconv1, gamma inside pwconv2); no dropout or
    stochastic depth, this is eval-only.
    """

    def __init__(self, block: Block, onednn: bool = True) -> None:
        super().__init__()
        self.onednn = onednn  # False: plain GEMM + separate GELU/add (to measure what the fused epilogues give)
        self.dwconv = block.dwconv
        norm = block.first_norm
        self.eps = norm.eps if isinstance(norm, ChannelNorm) else None  # None: BN already inside dwconv
        self.dim = block.pwconv1.in_channels
        self.act = "gelu" if isinstance(block.act2, nn.GELU) else "relu"
        self.fc1 = nn.Linear(block.pwconv1.in_channels, block.pwconv1.out_channels, bias=block.pwconv1.bias is not None)
        self.fc2 = nn.Linear(block.pwconv2.in_channels, block.pwconv2.out_channels, bias=block.pwconv2.bias is not None)
        for fc, conv in ((self.fc1, block.pwconv1), (self.fc2, block.pwconv2)):
            _set_weight_bias(fc, conv.weight.flatten(1), conv.bias)

    @staticmethod
    def matches(block: Block) -> bool:
        """ConvNeXt-shaped: dwconv first, at most one norm (right after it), one activation between the 1x1
        convs, identity shortcut, and every norm already folded into its affine-free form."""
        return (
            block.dwconv_first
            and isinstance(block.first_norm, (ChannelNorm, Folded))
            and isinstance(block.norm2, nn.Identity) and isinstance(block.norm3, nn.Identity)
            and isinstance(block.act1, nn.Identity) and isinstance(block.act3, nn.Identity)
            and block.gamma is None
            and isinstance(block.shortcut, nn.Identity)
            and block.pwconv1.kernel_size == (1, 1) and block.pwconv2.kernel_size == (1, 1)
            and block.pwconv1.groups == 1 and block.pwconv2.groups == 1
        )

    def _use_onednn(self, y: torch.Tensor) -> bool:
        return (
            self.onednn
            and y.device.type == "cpu"
            and y.dtype == self.fc1.weight.dtype
            and not torch.is_autocast_enabled("cpu")
            and not _tracing()
            and _onednn_linear_ok(y.dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC view: contiguous when x is channels_last
        if self.eps is not None:
            y = F.layer_norm(y, (self.dim,), None, None, self.eps)
        y = y.reshape(-1, self.dim)
        shortcut = x.permute(0, 2, 3, 1).reshape(-1, c)
        if self._use_onednn(y):
            op = torch.ops.mkldnn._linear_pointwise
            y = op(y, self.fc1.weight, self.fc1.bias, self.act, [], "none")
            y = op.binary(y, shortcut.contiguous(), self.fc2.weight, self.fc2.bias, "add")
        else:  # GPU, autocast, tracing/export, torch.compile (inductor fuses on its own)
            y = F.gelu(self.fc1(y)) if self.act == "gelu" else F.relu(self.fc1(y))
            y = self.fc2(y) + shortcut
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------- precision


@functools.lru_cache(maxsize=None)
def cpu_bf16_slowdown(size: int = 256, reps: int = 5) -> float:
    """Measured time of a bf16 GEMM over the same fp32 GEMM on this CPU (>1 means bf16 is slower).

    CPUs without native bf16 (no AVX512-BF16/AMX) emulate it; with the current wheels that is several times
    slower than fp32, which is why fp32 is the CPU default.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)

    def best(x, y):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    best(a, b)
    fp32 = best(a, b)
    ab, bb = a.bfloat16(), b.bfloat16()
    best(ab, bb)
    return best(ab, bb) / max(fp32, 1e-9)


# oneDNN's ISA levels in increasing order (ONEDNN_MAX_CPU_ISA caps them); native bf16 dot products start at
# AVX512_CORE_BF16. AVX2_VNNI_2 only converts bf16, it does not multiply in it.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")


def _cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX tiles on this CPU (torch's cpuinfo query, /proc/cpuinfo where torch lacks it)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(p is not None for p in probes):
        return any(p() for p in probes)
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether oneDNN will run bf16 on matrix units here (not emulated), and the reason, for messages.

    Honours oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA): a CPU with AMX capped to
    AVX512_CORE_VNNI emulates bf16 like one without it.
    """
    if not _cpu_has_bf16_units():
        return False, f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no AVX512-BF16 or AMX"
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) < _ONEDNN_ISAS.index("AVX512_CORE_BF16"):
        return False, f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below AVX512_CORE_BF16"
    return True, "this CPU has native bf16 (AVX512-BF16/AMX)"


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> on CUDA bf16 (fp16 where bf16 is unsupported); on CPU bf16 where the CPU multiplies in bf16
    natively (``cpu_native_bf16``), else fp32. Rejects fp16 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_native_bf16()[0] else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 is for GPUs (CPU fp16 kernels are slow or missing); use fp32 or bf16 on CPU")
    return precision


def default_autocast(precision: str, device: torch.device) -> bool:
    """How reduced precision runs when the caller does not say: on CPU the whole network cast to bf16
    (measured 1.5x faster than autocast on an AMX Xeon, which keeps casting activations around every
    conv), on CUDA autocast (keeps LayerNorm and softmax in fp32 at no measurable cost there)."""
    return not (device.type == "cpu" and precision == "bf16")


# ----------------------------------------------------------------------------------------- the wrapper


def compile_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile (inductor) can run here, and why not."""
    try:
        import torch._dynamo as dynamo
    except ImportError as e:  # pragma: no cover - torch without dynamo
        return False, f"torch._dynamo is missing ({e})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported on this Python/platform"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return False, "inductor needs a C++ compiler (g++/clang++) for CPU code and none is on PATH"
    return True, ""


class InferenceModel(nn.Module):
    """An eval-only model returned by optimize_for_inference: casts the input (memory format, dtype), runs the
    folded network under the chosen precision, returns fp32 logits. Unknown attributes (cfg, num_classes,
    forward_features, ...) are those of the folded ConvNeXt in ``.model``."""

    def __init__(self, model: nn.Module, *, precision: str, autocast: bool, channels_last: bool,
                 compile: bool, report: FoldReport, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.precision, self.autocast, self.channels_last = precision, autocast, channels_last
        self.report, self.device = report, device
        self.dtype = DTYPES[precision]
        self._compiled = None
        self.compiled = False
        if compile:
            ok, why = compile_available(device)
            if ok:
                # freezing: inductor treats weights as constants (constant-folds them, prepacks GEMM weights);
                # static shapes: one graph per batch size, since a symbolic batch disables the weight prepacking
                self._compiled = torch.compile(model, dynamic=False, options={"freezing": True})
                self.compiled = True
            else:
                warnings.warn(f"torch.compile unavailable ({why}); running eager", RuntimeWarning, stacklevel=3)

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("this model comes from optimize_for_inference and is eval-only "
                               "(norms and layer scale are folded); train the original model instead")
        return super().train(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["_modules"].get("model")
            if inner is None:
                raise
            return getattr(inner, name)

    def _amp(self):
        return autocast(self.device, self.precision) if self.autocast else contextlib.nullcontext()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.autocast and x.is_floating_point():
            x = x.to(self.dtype)
        return x

    def _run(self, fn, x: torch.Tensor):
        with torch.inference_mode(), self._amp():
            out = fn(self._prepare(x))
        # logits (or a backbone's list of feature maps) come back fp32 whatever the compute precision
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._run(self._compiled, x)
            except Exception as e:  # noqa: BLE001 - any backend failure: the eager model still gives the answer
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "running eager from now on", RuntimeWarning, stacklevel=2)
                self._compiled, self.compiled = None, False
        return self._run(self.model, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.forward_features, x)


# ----------------------------------------------------------------------------------------- entry point


def fold_model(model: ConvNeXt, fast_blocks: bool = True, onednn: bool = True) -> FoldReport:
    """Apply every exact fold to `model` in place (eval semantics); returns what was done."""
    report = FoldReport()
    for module in list(model.modules()):
        if isinstance(module, Stem):
            _fold_conv_norm_pairs(module, report)
        elif isinstance(module, Downsample):
            _fold_downsample(module, report)
        elif isinstance(module, Block):
            _fold_block(module, report)
        elif isinstance(module, Head):
            _fold_head(module, report)
    if fast_blocks:
        for stage in model.stages:
            for i, block in enumerate(stage.blocks):
                if isinstance(block, Block) and FastBlock.matches(block):
                    stage.blocks[i] = FastBlock(block, onednn=onednn)
                    report.fast_blocks += 1
    return report


def optimize_for_inference(
    model: nn.Module,
    *,
    precision: str = "auto",
    autocast: bool | None = None,
    channels_last: bool = True,
    fast_blocks: bool = True,
    onednn: bool = True,
    compile: bool = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """An equivalent eval-only copy of `model` that runs faster; the original is not modified.

    precision: "auto" (CPU: bf16 where it has native bf16, else fp32; CUDA: bf16, or fp16 where bf16 is
    unsupported), "fp32", "bf16" or "fp16" (CUDA only). The choice is the returned model's ``.precision``.
    autocast: for bf16/fp16, run under torch.autocast (True) or cast weights and inputs fully (False);
    None: ``default_autocast`` (full cast on CPU, autocast on CUDA).
    channels_last: NHWC weights and inputs. fast_blocks: ConvNeXt blocks as GEMMs on the NHWC view;
    onednn: on CPU run those GEMMs as oneDNN inner products with GELU and the residual add fused in.
    compile: torch.compile with inductor and frozen weights; warns and stays eager where unavailable.
    device: where to run (default: where the model's parameters are).

    Models with nothing to fold (not a ConvNeXt, or a config without norm/conv pairs or layer scale) are
    returned unchanged, with a warning.
    """
    if not isinstance(model, ConvNeXt):
        warnings.warn(f"optimize_for_inference: {type(model).__name__} is not a convnext.ConvNeXt; "
                      "returned unchanged", RuntimeWarning, stacklevel=2)
        return model
    params = list(model.parameters())
    device = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False; use device='cpu'")
    precision = resolve_precision(precision, device)
    if autocast is None:
        autocast = default_autocast(precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_native_bf16()[0]:
        slowdown = cpu_bf16_slowdown()
        if slowdown > 1.5:
            warnings.warn(f"bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}) is {slowdown:.1f}x slower "
                          "than fp32 in a GEMM test (no native bf16); precision auto picks fp32 here", RuntimeWarning,
                          stacklevel=2)

    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        report = fold_model(fused, fast_blocks=fast_blocks, onednn=onednn)
    if report.folds == 0 and report.fast_blocks == 0:
        warnings.warn("optimize_for_inference: this model has no foldable norm/conv pairs or layer scale; "
                      "returned unchanged", RuntimeWarning, stacklevel=2)
        return model
    for p in fused.parameters():
        p.requires_grad_(False)
    fused = fused.to(device)
    if not autocast and precision != "fp32":
        fused = fused.to(DTYPES[precision])
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return InferenceModel(fused, precision=precision, autocast=autocast, channels_last=channels_last,
                          compile=compile, report=report, device=device).eval()


__all__ = [
    "PRECISIONS",
    "ChannelNorm",
    "FastBlock",
    "FoldReport",
    "InferenceModel",
    "compile_available",
    "cpu_bf16_slowdown",
    "cpu_native_bf16",
    "default_autocast",
    "fold_affine_into_next",
    "fold_model",
    "fold_norm_into_previous",
    "optimize_for_inference",
    "resolve_precision",
]
