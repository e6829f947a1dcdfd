"""INT8 post-training quantization: ``quantize(model, calibration)`` and the INT8 file format.

The well-kept stack does the work: PyTorch's PT2E flow (``torch.export`` -> ``prepare_pt2e`` -> calibrate ->
``convert_pt2e``, from torchao) with the x86 Inductor quantizer, then ``torch.compile`` (inductor, frozen
weights), which lowers the quantize/dequantize pairs around each conv and linear to oneDNN INT8 kernels.
Weights are INT8 per output channel, activations UINT8 per tensor with ranges observed on the
calibration images (histogram observer).

What stays in floating point, and why:

- LayerNorm and the GELU between the pointwise convs: the x86 quantizer leaves them float (a LayerNorm's
  output range differs per token; the quantized kernels take float in and out of them).
- The stem and the classifier head (``KEEP_FLOAT``): the first conv sees raw pixels and the last layer
  produces the logits; they cost a few percent of the MACs, and keeping them float is the usual
  protection of accuracy. The README ("Reduced precision and INT8") has the measured cost of each choice.

The model is first folded as ``optimize_for_inference`` folds it (LayerNorm affine into the next pointwise
layer, layer scale into the last) and its blocks run as ``FastBlock``: pointwise layers as linears on the NHWC
view, so the quantizer sees linear -> GELU -> linear + residual. Inductor fuses that residual add into the
second INT8 GEMM; in the 1x1-conv form it asserts ("QConv Binary Inplace Fusion requires accum is not an
alias") on chained residual blocks, while its linear path handles the same chain.

The INT8 file is a ``.safetensors`` checkpoint: the usual ``convnext`` metadata (architecture, classes,
preprocessing) plus ``convnext_quantization`` (scheme, input size, float layers, library versions), and as
tensors the prepared model's state: folded float weights and every observer's statistics. Loading rebuilds
the same graph from the architecture and converts it again, so no pickle is ever read (``torch.export.save``
files may need it). It loads with the torch and torchao versions that wrote it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import METADATA_KEY, QUANTIZATION_KEY, ModelInfo, load_model, read_info, read_quantization
from ..data.assembly import eval_dataset, load_eval_split
from ..data.datasets import DATASETS
from ..data.folders import print_warnings_as_lines
from ..data.images import collect_images, load_batch
from ..errors import CheckpointError, UsageError
from ..files import atomic_write
from ..models import ConvNeXt
from ..preprocess import Preprocess
from ..weights.io import resolve_weights_path
from .fuse import compile_available, fold_model

SCHEME = "pt2e-x86-inductor"
KEEP_FLOAT = ("stem", "head")
MIN_CALIBRATION_IMAGES = 32
MAX_BATCH = 1 << 16  # the exported graph's batch dimension is symbolic up to this size


# torch.export in torch 2.11 no longer records the source partitions the x86 quantizer matches on, so it
# annotates nothing and the "INT8" graph is the float one (pytorch/ao#3914; fixed in torch 2.12).
MIN_TORCH = (2, 12)


def torch_supports_int8() -> bool:
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= MIN_TORCH


def _pt2e():
    """torchao's PT2E functions and the x86 Inductor quantizer module, or a one-line hint (install, upgrade)."""
    if not torch_supports_int8():
        raise UsageError(f"INT8 quantization needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}: torch {torch.__version__}'s "
                         "torch.export drops what the x86 quantizer matches, so nothing would be quantized; "
                         "upgrade torch")
    try:
        # torchao's import registers an Enum with torch's pytree, which logs a deprecation to stderr
        with _quiet("torch.utils._pytree"):
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise UsageError(f"INT8 quantization needs torchao ({e}); install the deploy extra: "
                         "pip install -e '.[deploy]'") from None
    return prepare_pt2e, convert_pt2e, xiq


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Raise these torch loggers to ERROR for a moment, and drop torch's own advice to itself ("To copy
    construct from a tensor ...", raised inside torchao/inductor code): noise where a command's output should
    be one clean report (inductor's "no CUDA runtime" on a CPU machine, a pytree deprecation)."""
    saved = [(log, log.level) for log in map(logging.getLogger, loggers)]
    for log, _ in saved:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------- calibration


def calibration_batches(calibration: torch.Tensor | Iterable, batch_size: int = 64) -> list[torch.Tensor]:
    """The calibration images as a list of float (N, C, H, W) batches: a tensor, or any iterable (a
    DataLoader) of image batches or of (images, labels) pairs."""
    if isinstance(calibration, torch.Tensor):
        if calibration.ndim != 4:
            raise UsageError(f"calibration images must be a (N, C, H, W) batch, got shape {tuple(calibration.shape)}")
        return list(calibration.split(batch_size))
    batches = []
    for item in calibration:
        images = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise UsageError("calibration must be a (N, C, H, W) tensor or yield such batches (or (images, labels) "
                             f"pairs); got {type(images).__name__}")
        batches.append(images)
    return batches


def check_calibration(batches: list[torch.Tensor], model: ConvNeXt) -> int:
    """Refuse calibration data that cannot set sound ranges; returns the image count."""
    count = sum(b.shape[0] for b in batches)
    if count < MIN_CALIBRATION_IMAGES:
        raise UsageError(f"got {count} calibration image(s); INT8 ranges need at least {MIN_CALIBRATION_IMAGES} "
                         "(a few hundred recommended) from the data the model will see")
    channels = model.cfg.in_chans
    for b in batches:
        if b.shape[1] != channels:
            raise UsageError(f"calibration images have {b.shape[1]} channel(s) but the model takes {channels}; "
                             "give images preprocessed like the model's inputs")
        if b.shape[2:] != batches[0].shape[2:]:
            raise UsageError(f"calibration images mix sizes {tuple(batches[0].shape[2:])} and {tuple(b.shape[2:])}; "
                             "resize them to the model's input size")
        if not b.is_floating_point() or not torch.isfinite(b).all():
            raise UsageError("calibration images must be finite float tensors (normalised like the model's inputs)")
    return count


# ----------------------------------------------------------------------------------------- the graph


def _prepared_graph(model: ConvNeXt, example: torch.Tensor, keep_float: tuple[str, ...]) -> nn.Module:
    """The folded model (blocks in their NHWC linear form, see the module docstring) exported with a symbolic
    batch, with observers inserted (not yet calibrated)."""
    prepare_pt2e, _, xiq = _pt2e()
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        fold_model(folded, fast_blocks=True)
    folded = folded.to(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = example.contiguous(memory_format=torch.channels_last)
    exported = torch.export.export(folded, (example,), dynamic_shapes=({0: batch},))
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    return prepare_pt2e(exported.module(), quantizer)


class QuantizedModel(nn.Module):
    """An eval-only INT8 ConvNeXt called on float image batches; returns fp32 logits.

    ``.precision`` is ``"int8"``; ``.cfg`` and ``.num_classes`` are the float model's. Each new batch size
    compiles the graph once (inductor, frozen weights; static shapes, which the INT8 weight prepacking needs),
    up to ``MAX_BATCH_SIZES`` of them; after that a batch is padded up to the nearest compiled size, or run in
    chunks of the largest, so a stream of ragged batches never compiles again. Without a C++ compiler it runs
    the converted graph eagerly (the reference quantized ops: the same numbers, slowly) and says so.
    """

    precision = "int8"
    MAX_BATCH_SIZES = 4  # torch.compile recompiles per static shape; dynamo gives up after 8 (then eager)

    def __init__(self, graph: nn.Module, state: dict[str, torch.Tensor], cfg, input_size: tuple[int, int, int],
                 keep_float: tuple[str, ...], compile: bool = True) -> None:
        super().__init__()
        self.graph = graph
        self.cfg, self.num_classes = cfg, cfg.num_classes
        self.input_size, self.keep_float = tuple(input_size), tuple(keep_float)
        self._state = state  # what save_quantized writes: folded weights and observer statistics
        self._want_compile = compile
        self._runner = None
        self._sizes: set[int] = set()  # batch sizes compiled so far
        self.compiled = False
        self.training = False  # not .eval(): exported graphs refuse train()/eval() calls

    def train(self, mode: bool = True) -> "QuantizedModel":
        if mode:
            raise RuntimeError("this INT8 model comes from convnext quantize and is eval-only; train the float "
                               "checkpoint it was quantized from instead")
        return self

    def _ensure_runner(self):
        if self._runner is not None:
            return self._runner
        ok, why = compile_available(torch.device("cpu")) if self._want_compile else (False, "compile=False")
        if ok:
            self._runner, self.compiled = torch.compile(self.graph, dynamic=False), True
        else:
            if self._want_compile:
                warnings.warn(f"torch.compile unavailable ({why}); the INT8 model runs its reference ops eagerly, "
                              "far slower than fp32", RuntimeWarning, stacklevel=3)
            self._runner = self.graph
        return self._runner

    def _call(self, runner, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.compiled or n in self._sizes or len(self._sizes) < self.MAX_BATCH_SIZES:
            self._sizes.add(n)
            return runner(x)
        larger = [b for b in self._sizes if b > n]
        if not larger:
            size = max(self._sizes)
            return torch.cat([self._call(runner, part) for part in x.split(size)])
        pad = x.new_zeros((min(larger) - n, *x.shape[1:])).contiguous(memory_format=torch.channels_last)
        return runner(torch.cat([x, pad]))[:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(f"this INT8 model was quantized for (N, {', '.join(map(str, self.input_size))}) inputs, "
                             f"got {tuple(x.shape)}; preprocess images to that size")
        device = x.device
        x = x.detach().to("cpu", torch.float32).contiguous(memory_format=torch.channels_last)
        runner = self._ensure_runner()
        # freezing makes inductor treat the weights as constants, which is what lowers the quantize/dequantize
        # pairs to prepacked oneDNN INT8 kernels; it is read when a call compiles, so every call sets it
        # (compile(options={"freezing": True}) did not reach that pass for these graphs)
        import torch._inductor.config as inductor_config  # torch's compiler settings: loaded only when used

        frozen = inductor_config.patch(freezing=True) if self.compiled else contextlib.nullcontext()
        with torch.no_grad(), frozen, _quiet("torch.utils.cpp_extension"):
            return self._call(runner, x).float().to(device)


def quantize(model: ConvNeXt, calibration: torch.Tensor | Iterable, *, keep_float: Iterable[str] = KEEP_FLOAT,
             compile: bool = True) -> QuantizedModel:
    """INT8 copy of ``model`` (the original is untouched), with activation ranges observed on ``calibration``:
    a (N, C, H, W) float tensor of preprocessed images or an iterable (DataLoader) of such batches or of
    (images, labels) pairs. At least ``MIN_CALIBRATION_IMAGES``; a few hundred from the user's data is
    enough. ``keep_float``: names of submodules left in floating point (default: the stem and the head).
    Runs on CPU (x86 oneDNN kernels)."""
    if not isinstance(model, ConvNeXt):
        raise UsageError(f"quantize takes a convnext.ConvNeXt, got {type(model).__name__}")
    model = copy.deepcopy(model).to("cpu").eval()  # the caller's model stays where it was
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UsageError("the model has non-finite weights; quantize a checkpoint from a run that did not diverge")
    batches = [b.to("cpu") for b in calibration_batches(calibration)]
    check_calibration(batches, model)
    keep_float = tuple(keep_float)
    names = dict(model.named_modules())
    unknown = [n for n in keep_float if n not in names]
    if unknown:
        raise UsageError(f"keep_float names {unknown} are not submodules of the model; use names like "
                         "'stem', 'head', 'stages.0'")
    _, convert_pt2e, _ = _pt2e()
    with _quiet():
        prepared = _prepared_graph(model, batches[0][:2], keep_float)
        with torch.no_grad():
            for b in batches:
                prepared(b.float().contiguous(memory_format=torch.channels_last))
        state = {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items()}
        graph = convert_pt2e(prepared)
    if not any("dequantize" in str(n.target) for n in graph.graph.nodes):
        raise RuntimeError(f"the quantizer left every layer float (torch {torch.__version__}); nothing to gain from "
                           "this INT8 model, so none is returned")
    return QuantizedModel(graph, state, model.cfg, tuple(batches[0].shape[1:]), keep_float, compile=compile)


# ----------------------------------------------------------------------------------------- from a checkpoint


def calibration_images(source: str | os.PathLike, pre: Preprocess, count: int,
                       data_root: str | os.PathLike | None = None) -> torch.Tensor:
    """``count`` images for calibration, preprocessed as the model's inputs (``pre``): from a dataset name
    (its training split, e.g. fashion_mnist) or from image files / folders (searched recursively); a fixed
    shuffle (seed 0) picks them, so every class of a sorted folder is represented."""
    if count < MIN_CALIBRATION_IMAGES:
        raise UsageError(f"{count} calibration images asked for: INT8 ranges need at least {MIN_CALIBRATION_IMAGES} "
                         "(a few hundred recommended)")
    text = os.fspath(source)
    if text in DATASETS and DATASETS[text].standalone:
        ds = eval_dataset(load_eval_split(text, "train", data_root, pre.channels), pre)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:count].tolist()
        return torch.stack([ds[i][0] for i in order])
    paths, problems = collect_images([text])
    if not paths:
        reason = problems[0][1] if problems else "no images found"
        raise UsageError(f"--calibration {text}: {reason}; give a folder of images like the model's inputs or a "
                         f"dataset name ({', '.join(n for n, d in DATASETS.items() if d.standalone)})")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:count].tolist()
    with print_warnings_as_lines():
        batch, bad = load_batch([paths[i] for i in order], pre)
    for path, reason in bad:
        print(f"convnext quantize: skipped {path}: {reason}", file=sys.stderr)
    return batch


def quantize_checkpoint(checkpoint: str | os.PathLike, calibration: str | os.PathLike, output: str | os.PathLike, *,
                        images: int = 512, keep_float: Iterable[str] = KEEP_FLOAT, data_root=None,
                        model_name: str | None = None, arch: dict | None = None) -> dict[str, Any]:
    """``convnext quantize``: a float checkpoint -> an INT8 file, calibrated on ``images`` images of
    ``calibration``; also reports how often INT8 and fp32 agree on those images (top-1)."""
    src = resolve_weights_path(checkpoint)
    out = Path(output)
    if out.suffix != ".safetensors":
        raise UsageError(f"-o {out}: INT8 models are .safetensors files; name it e.g. {out.with_suffix('.safetensors').name}")
    if out.exists() and out.resolve() == src.resolve():
        raise UsageError(f"-o {out} is the checkpoint being quantized; write the INT8 model to another file")
    model, info = load_model(src, model_name=model_name, **(arch or {}))
    pre = info.preprocess
    batch = calibration_images(calibration, pre, images, data_root)
    qmodel = quantize(model, batch, keep_float=keep_float)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batch.split(64)])
    got = qmodel(batch)
    info.train = {**info.train, "quantized_from": src.name, "calibration_images": int(batch.shape[0])}
    path = save_quantized(qmodel, out, info)
    return {"path": str(path), "calibration_images": int(batch.shape[0]), "keep_float": list(qmodel.keep_float),
            "compiled": qmodel.compiled, "top1_agreement": 100.0 * (got.argmax(1) == ref.argmax(1)).float().mean().item(),
            "max_abs_logit_diff": (got - ref).abs().max().item(), "size_bytes": path.stat().st_size}


# ----------------------------------------------------------------------------------------- the file


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike, info: ModelInfo | None = None) -> Path:
    """Write an INT8 model (its metadata, folded weights and observer statistics) atomically."""
    info = info or ModelInfo(config=qmodel.cfg)
    bad = [k for k, v in qmodel._state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"not writing {path}: {bad[0]} is non-finite; re-quantize from a sound checkpoint")
    record = {"scheme": SCHEME, "input_size": list(qmodel.input_size), "keep_float": list(qmodel.keep_float),
              "torch": torch.__version__, "torchao": _version("torchao")}
    metadata = {METADATA_KEY: info.to_json(), QUANTIZATION_KEY: json.dumps(record), "format": "pt"}
    return atomic_write(path, lambda tmp: save_file(qmodel._state, tmp, metadata=metadata))


def int8_device(device: str | torch.device | None) -> torch.device:
    """INT8 models run on the CPU (oneDNN kernels): "auto" and "cpu" mean it, anything else is refused."""
    if str(device) not in ("auto", "cpu", "None"):
        raise UsageError(f"INT8 models run on the CPU; drop --device {device} or pass --device cpu")
    return torch.device("cpu")


def load_quantized(path: str | os.PathLike, compile: bool = True) -> tuple[QuantizedModel, ModelInfo]:
    """An INT8 model written by ``save_quantized`` (``convnext quantize``), with its ModelInfo."""
    p = resolve_weights_path(path)
    record = read_quantization(p)
    if record is None:
        raise CheckpointError(f"{p} is not an INT8 model; make one with convnext quantize CHECKPOINT --calibration DATA")
    if record.get("scheme") != SCHEME:
        raise CheckpointError(f"{p}: INT8 scheme {record.get('scheme')!r} is not {SCHEME!r}; re-quantize it")
    info = read_info(p)
    model = ConvNeXt(info.config).eval()
    keep_float, input_size = tuple(record["keep_float"]), tuple(record["input_size"])
    with _quiet():
        prepared = _prepared_graph(model, torch.zeros(2, *input_size), keep_float)
    state = load_file(str(p))
    try:
        prepared.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{p}: its INT8 graph does not match this install's ({str(e).splitlines()[0][:120]}); it was made with "
            f"torch {record.get('torch')} and torchao {record.get('torchao')} (here {torch.__version__}, "
            f"{_version('torchao')}): re-quantize the float checkpoint with convnext quantize") from None
    # torchao's per-channel observer skips its ``eps`` buffer when loading a state dict (it loads only
    # min/max), and eps clamps the scale of near-constant weight channels: put every buffer back as saved
    with torch.no_grad():
        for name, buffer in prepared.named_buffers():
            if name in state and buffer.shape == state[name].shape:
                buffer.copy_(state[name])
    _, convert_pt2e, _ = _pt2e()
    with _quiet():
        graph = convert_pt2e(prepared)
    return QuantizedModel(graph, state, info.config, input_size, keep_float, compile=compile), info


__all__ = ["KEEP_FLOAT", "MIN_CALIBRATION_IMAGES", "QuantizedModel", "calibration_batches", "calibration_images",
           "check_calibration", "int8_device", "load_quantized", "quantize", "quantize_checkpoint", "save_quantized"]
