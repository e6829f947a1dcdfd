"""Export a model to ONNX, TorchScript, a torch.export program or OpenVINO IR, verified before it is written.

Every export is loaded back by the runtime that will run it (onnxruntime, torch.jit.load,
torch.export.load, OpenVINO's CPU plugin in fp32) and compared with the PyTorch model on sample inputs at two batch sizes (and,
with dynamic height/width, at a second resolution). The file only appears at its final path when the
largest difference is within tolerance (1e-4 for fp32), so a bad export never replaces a good one.
The checkpoint's metadata (class names, preprocessing) travels inside the exported file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import ModelInfo, load_model
from ..errors import UsageError, one_line
from ..files import atomic_write, check_output_path
from ..runtime import DTYPES
from .fuse import optimize_for_inference

FORMATS = ("onnx", "torchscript", "torch-export", "openvino")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "torch-export": ".pt2", "openvino": ".xml"}
OPENVINO_METADATA = ["convnext", "metadata"]  # rt_info path of the ModelInfo JSON inside the IR
METADATA_NAME = "convnext.json"  # ONNX metadata_props key / extra file name in .pt and .pt2 archives
INPUT_NAME, OUTPUT_NAME = "image", "logits"
FP32_TOLERANCE = 1e-4
# --precision: what the exported file stores and computes in. Default tolerances (max abs logit difference from the
# PyTorch model in the same precision): a runtime's fp16/bf16 kernels round differently from PyTorch's, by up to a
# unit in the last place of the logits (fp16: ~0.008 at 10; bf16: ~0.06).
EXPORT_PRECISIONS = ("fp32", "fp16", "bf16")
TOLERANCES = {"fp32": FP32_TOLERANCE, "fp16": 2e-2, "bf16": 1e-1}


class ExportVerificationError(RuntimeError):
    """The exported file does not reproduce the PyTorch model's outputs."""


@dataclass
class ExportCheck:
    batch: int
    height: int
    width: int
    max_abs_diff: float


@dataclass
class ExportResult:
    path: Path
    format: str
    tolerance: float
    checks: list[ExportCheck] = field(default_factory=list)
    # --fast only: the fused model's difference from the original one on the same samples
    fused_vs_original: float | None = None
    precision: str = "fp32"
    # --precision fp16/bf16: the exported model's (in PyTorch) difference from the fp32 model; the rounding cost
    fp32_vs_reduced: float | None = None

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": os.fspath(self.path),
            "format": self.format,
            "tolerance": self.tolerance,
            "max_abs_diff": self.max_abs_diff,
            "fused_vs_original": self.fused_vs_original,
            "precision": self.precision,
            "fp32_vs_reduced": self.fp32_vs_reduced,
            "checks": [vars(c) for c in self.checks],
        }


def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    """``runs/x/model.safetensors`` -> ``runs/x/model.onnx`` (or .pt / .pt2)."""
    p = Path(checkpoint)
    base = p / "model" if p.is_dir() else p.with_suffix("")
    return base.with_suffix(SUFFIXES[fmt])


def sample_inputs(info: ModelInfo, dynamic_hw: bool, batch_sizes: tuple[int, int] = (1, 3),
                  seed: int = 0) -> list[torch.Tensor]:
    """Normalised-image-like inputs (standard normal) at two batch sizes, plus a second size for dynamic H/W."""
    g = torch.Generator().manual_seed(seed)
    c, size = info.config.in_chans, example_size(info, dynamic_hw)
    shapes = [(b, c, size, size) for b in batch_sizes]
    if dynamic_hw:
        stride = info.config.total_stride
        shapes.append((batch_sizes[-1], c, size + stride + 3, size + 2 * stride))  # non-square, odd
    return [torch.randn(s, generator=g) for s in shapes]


def example_size(info: ModelInfo, dynamic_hw: bool) -> int:
    size = max(info.preprocess.input_size, info.config.total_stride)
    if dynamic_hw:
        # The exporters specialise a 1x1 last feature map; from 2x the total stride up, one graph serves all.
        size = max(size, 2 * info.config.total_stride)
    return size


def export_dynamic_shapes(info: ModelInfo, dynamic_batch: bool, dynamic_hw: bool) -> dict[str, dict[int, Any]] | None:
    from torch.export import Dim

    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = Dim("batch", min=1, max=65536)
    if dynamic_hw:
        low = 2 * info.config.total_stride
        axes[2], axes[3] = Dim("height", min=low, max=16384), Dim("width", min=low, max=16384)
    return {"x": axes} if axes else None


@contextlib.contextmanager
def quiet_exporters():
    """The exporters and converters (torch.onnx, OpenVINO, NNCF) print progress bars and deprecation chatter,
    and log the fallbacks they take (e.g. a failed opset conversion, with its traceback); the user gets our
    one-line summary instead, or an exception. Used here and by infer/runtimes.py."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "nncf")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _run_onnx(path: str, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: buffer-reuse notices for dynamic shapes are not problems
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def write_onnx(model: nn.Module, example: torch.Tensor, path: str, dynamic_shapes, info: ModelInfo,
                opset: int | None) -> None:
    import onnx

    kwargs = {"opset_version": opset} if opset else {}
    try:
        with quiet_exporters():
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, verbose=False,
                                        **kwargs)
    except Exception as e:  # noqa: BLE001 - below its native opset the exporter runs onnx's version converter
        if not opset:
            raise
        raise UsageError(f"--opset {opset}: torch's ONNX exporter cannot write this model at opset {opset} "
                         f"({one_line(e, 120)}); use 18 or newer, or leave --opset out") from None
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program; update torch (>= 2.5) and onnxscript")
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset and written != opset:  # the exporter falls back to its own opset where it cannot convert
        raise UsageError(f"--opset {opset}: torch's ONNX exporter wrote opset {written} instead; pass an opset it "
                         f"can write (e.g. {written}), or leave --opset out")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, info.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: str, info: ModelInfo) -> None:
    with quiet_exporters():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={METADATA_NAME: info.to_json()})


def _run_torchscript(path: str, x: torch.Tensor) -> torch.Tensor:
    with quiet_exporters():
        return torch.jit.load(path, map_location="cpu")(x)


def _write_torch_export(model: nn.Module, example: torch.Tensor, path: str, dynamic_shapes, info: ModelInfo) -> None:
    # Through a buffer: torch.export.save/load insist on a ".pt2" name, and the atomic temp file has none.
    buffer = io.BytesIO()
    with quiet_exporters():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, buffer, extra_files={METADATA_NAME: info.to_json()})
    Path(path).write_bytes(buffer.getvalue())


def _load_torch_export(path: str | os.PathLike, extra_files: dict[str, str] | None = None):
    with quiet_exporters():
        return torch.export.load(io.BytesIO(Path(path).read_bytes()), extra_files=extra_files)


def _run_torch_export(path: str, x: torch.Tensor) -> torch.Tensor:
    return _load_torch_export(path).module()(x)


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise UsageError(f"--format openvino needs OpenVINO ({e}); install the deploy extra: "
                         "pip install -e '.[deploy]'") from None
    return openvino


def _write_openvino(model: nn.Module, example: torch.Tensor, folder: Path, name: str, info: ModelInfo,
                    dynamic_hw: bool, fp16: bool = False) -> Path:
    """IR (name.xml + name.bin) in ``folder``: converted from the PyTorch model, batch dynamic (and H/W with
    ``dynamic_hw``), weights kept fp32 (OpenVINO would store them fp16 by default) unless ``fp16``, metadata in
    rt_info."""
    ov = _openvino()
    with quiet_exporters():
        converted = ov.convert_model(model, example_input=example)
    c = example.shape[1]
    h, w = (-1, -1) if dynamic_hw else example.shape[2:]
    converted.reshape({0: ov.PartialShape([-1, c, h, w])})
    converted.set_rt_info(info.to_json(), OPENVINO_METADATA)
    xml = folder / f"{name}.xml"
    ov.save_model(converted, str(xml), compress_to_fp16=fp16)
    return xml


def _run_openvino(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    # fp32: on CPUs with bf16 units OpenVINO would otherwise run bf16 and the check would measure that
    compiled = _openvino().Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled(x.numpy())[0])


def read_export_metadata(path: str | os.PathLike) -> ModelInfo:
    """The ModelInfo stored inside an exported file (class names, preprocessing, architecture)."""
    path = Path(path)
    if path.suffix == ".xml":
        text = str(_openvino().Core().read_model(str(path)).get_rt_info(OPENVINO_METADATA).astype(str))
    elif path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_NAME)
    else:
        extra = {METADATA_NAME: ""}
        with quiet_exporters():
            if path.suffix == ".pt2":
                _load_torch_export(path, extra_files=extra)
            else:
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[METADATA_NAME] or None
    if not text:
        raise UsageError(f"{path}: exported file holds no convnext metadata; export it with `convnext export`")
    return ModelInfo.from_json(text)


class CastIO(nn.Module):
    """``model`` with its weights in ``dtype`` behind float32 inputs and outputs: an exported file in fp16/bf16 is
    called like the fp32 one (the same preprocessed images in, fp32 logits out)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def check_export_precision(fmt: str, precision: str) -> None:
    """UsageError for a precision the format's runtime cannot store or run."""
    if precision not in EXPORT_PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not an export precision; use one of {', '.join(EXPORT_PRECISIONS)}")
    if precision == "bf16" and fmt == "onnx":
        raise UsageError("ONNX has no bf16 convolution; export --precision fp16 (or fp32), or bf16 with "
                         "--format torch-export / torchscript")
    if precision == "bf16" and fmt == "openvino":
        raise UsageError("OpenVINO chooses bf16 at run time on CPUs that have it (INFERENCE_PRECISION_HINT), from an "
                         "fp32 or fp16 IR; export --precision fp32 or fp16")


def export_model(model: nn.Module, info: ModelInfo, output: str | os.PathLike, fmt: str = "onnx", *,
                 dynamic_batch: bool = True, dynamic_hw: bool = False, opset: int | None = None,
                 tolerance: float | None = None, reference: nn.Module | None = None,
                 precision: str = "fp32") -> ExportResult:
    """Export ``model`` (eval) to ``output`` and verify it; raises ExportVerificationError past tolerance.

    ``precision``: what the file stores and computes in. fp16/bf16 cast the weights (``CastIO``: inputs and
    logits stay fp32); OpenVINO's fp16 stores fp16 weights and computes in what the runtime picks. The file is
    verified against the PyTorch model in that precision (``tolerance``, default ``TOLERANCES[precision]``),
    and the rounding cost against fp32 is reported (``fp32_vs_reduced``).
    ``reference``: the original model when ``model`` is a fused copy; its difference is reported too.
    TorchScript is traced, so its batch (and H/W) are dynamic whatever the flags say.
    """
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    check_export_precision(fmt, precision)
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    if opset is not None and fmt == "onnx":
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if opset > newest:
            raise UsageError(f"--opset {opset} is not an ONNX opset this installation knows; use 18..{newest}, or "
                             "leave --opset out")
    elif opset is not None:
        raise UsageError(f"--opset applies to --format onnx only, not {fmt}")
    if not dynamic_batch and fmt != "torchscript":
        # verification runs two batch sizes, which a fixed-batch graph cannot take
        raise UsageError("a fixed batch size cannot be verified at two batch sizes; keep the dynamic batch axis")
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in model.state_dict().values()
           if t.is_floating_point()):
        model = copy.deepcopy(model).float().cpu()  # the caller's model stays where and what it was
    model = model.eval()
    output = Path(output)
    if output.suffix != SUFFIXES[fmt] and fmt != "torchscript":
        # torch.export.load and ONNX tools look at the suffix; a misnamed file is hard to use later
        raise UsageError(f"{fmt} output {output} should end in {SUFFIXES[fmt]}; pass -o {output.with_suffix(SUFFIXES[fmt])}")
    samples = sample_inputs(info, dynamic_hw)
    dynamic_shapes = export_dynamic_shapes(info, dynamic_batch, dynamic_hw)
    result = ExportResult(output, fmt, tolerance, precision=precision)
    with torch.no_grad():
        fp32 = [model(x).float() for x in samples]
        if reference is not None:
            ref = reference.eval().float().cpu()
            result.fused_vs_original = max((ref(x) - y).abs().max().item() for x, y in zip(samples, fp32))
        expected = fp32
        if precision != "fp32":
            if fmt == "openvino":  # fp16 weights in the IR; the verifying runtime computes in fp32
                reduced = copy.deepcopy(model).half().float().eval()
            else:
                model = reduced = CastIO(copy.deepcopy(model), DTYPES[precision]).eval()
            expected = [reduced(x).float() for x in samples]
            result.fp32_vs_reduced = max((a - b).abs().max().item() for a, b in zip(expected, fp32))

    def export_and_check(tmp: str) -> None:
        """Write the export to ``tmp`` (OpenVINO: the IR's .xml and .bin into the folder ``tmp``), then run
        it with its runtime on every sample; raise past tolerance."""
        example = samples[-1] if fmt == "torchscript" else samples[0].expand(2, *samples[0].shape[1:]).contiguous()
        with torch.no_grad():
            if fmt == "openvino":
                tmp = _write_openvino(model, example, Path(tmp), output.stem, info, dynamic_hw, fp16=precision == "fp16")
            elif fmt == "onnx":
                write_onnx(model, example, tmp, dynamic_shapes, info, opset)
            elif fmt == "torchscript":
                _write_torchscript(model, example, tmp, info)
            else:
                _write_torch_export(model, example, tmp, dynamic_shapes, info)
        runner = {"onnx": _run_onnx, "torchscript": _run_torchscript, "torch-export": _run_torch_export,
                  "openvino": _run_openvino}[fmt]
        for x, y in zip(samples, expected):
            with torch.no_grad():
                got = runner(tmp, x).float()
            if got.shape != y.shape:
                raise ExportVerificationError(f"{fmt} output shape {tuple(got.shape)} != PyTorch {tuple(y.shape)} "
                                              f"for input {tuple(x.shape)}")
            result.checks.append(ExportCheck(x.shape[0], x.shape[2], x.shape[3], (got - y).abs().max().item()))
        if result.max_abs_diff > tolerance or result.max_abs_diff != result.max_abs_diff:
            raise ExportVerificationError(
                f"{fmt} export differs from PyTorch by {result.max_abs_diff:.3g} (> {tolerance:g}); "
                f"nothing written to {output}. Rerun with --debug, or try another --opset / format"
            )

    if fmt != "openvino":
        atomic_write(output, export_and_check)
        return result
    # OpenVINO IR is two files: staged and checked in a temporary folder next to the output, then the weights
    # (.bin) and the .xml that reads them are each renamed into place, the .xml last
    check_output_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.stem}.", dir=output.parent) as staging:
        export_and_check(staging)
        staged = Path(staging)
        atomic_write(output.with_suffix(".bin"), lambda t: shutil.copyfile(staged / f"{output.stem}.bin", t))
        atomic_write(output, lambda t: shutil.copyfile(staged / f"{output.stem}.xml", t))
    return result


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None, fmt: str = "onnx", *,
                      fast: bool = False, model_name: str | None = None, arch: dict | None = None,
                      **kw: Any) -> ExportResult:
    """Load a checkpoint (CPU, fp32), optionally fuse it for inference, export and verify it (``export_model``'s
    keywords: precision, tolerance, dynamic_hw, opset)."""
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    check_export_precision(fmt, kw.get("precision", "fp32"))
    model, info = load_model(checkpoint, map_location="cpu", model_name=model_name, **(arch or {}))
    reference = None
    if fast:
        reference = model
        with quiet_exporters():
            fused = optimize_for_inference(model, precision="fp32", channels_last=False, device="cpu")
        # export the folded network itself; the InferenceModel wrapper only casts inputs at run time
        model = getattr(fused, "model", fused)
    out = Path(output) if output is not None else default_output(checkpoint, fmt)
    return export_model(model, info, out, fmt, reference=reference, **kw)


__all__ = [
    "EXPORT_PRECISIONS", "FORMATS", "TOLERANCES", "CastIO", "ExportCheck", "ExportResult", "ExportVerificationError", "default_output", "export_checkpoint",
    "export_dynamic_shapes", "quiet_exporters", "write_onnx",
    "export_model", "read_export_metadata", "sample_inputs",
]
