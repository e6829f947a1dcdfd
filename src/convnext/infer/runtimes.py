"""The deployers' runtimes as benchmark peers: OpenVINO and onnxruntime running our model, behind nn.Module.

Each wraps one compiled model of the runtime and is called like the PyTorch models of ``convnext
benchmark`` (a float batch in, logits out), so they are timed in the same interleaved loop. The
runtimes are optional (``pip install -e ".[deploy]"``); a missing one is skipped with a note. Both get
torch's thread count, so every row of a benchmark uses the same cores.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch
from torch import nn

from ..checkpoint import ModelInfo
from ..errors import UsageError
from .export import INPUT_NAME, OUTPUT_NAME, export_dynamic_shapes, quiet_exporters, write_onnx

# INFERENCE_PRECISION_HINT values of OpenVINO's CPU plugin
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class RuntimeModel(nn.Module):
    """A compiled runtime model as an eval-only module: numpy in, numpy out, logits back as a tensor."""

    def __init__(self, run, precision: str) -> None:
        super().__init__()
        self._run, self.precision = run, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x.detach().cpu().float().contiguous().numpy()))


def openvino_model(model: nn.Module, example: torch.Tensor, precision: str = "fp32",
                   calibration: torch.Tensor | None = None) -> RuntimeModel:
    """``model`` converted with ``openvino.convert_model`` and compiled for the CPU in ``precision``
    (fp32 or bf16); with ``calibration`` images, first quantized to INT8 by NNCF (post-training)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise UsageError(f"OpenVINO is not installed ({e}): pip install -e '.[deploy]'") from None
    with quiet_exporters():
        converted = ov.convert_model(model.eval(), example_input=example)
    converted.reshape({0: ov.PartialShape([-1, *example.shape[1:]])})
    label = precision
    if calibration is not None:
        try:
            import nncf
        except ImportError as e:
            raise UsageError(f"OpenVINO INT8 needs NNCF ({e}): pip install nncf") from None
        samples = [image[None].numpy() for image in calibration]
        with quiet_exporters():  # its progress bars must not reach a command's (JSON) output
            converted = nncf.quantize(converted, nncf.Dataset(samples), subset_size=len(samples))
        label = "int8"
    config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
              "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    return RuntimeModel(lambda a: compiled(a)[0], label)


class _Images:
    """onnxruntime's CalibrationDataReader protocol over a batch of images, one image per call."""

    def __init__(self, images: torch.Tensor, name: str) -> None:
        self._items = iter([{name: image[None].numpy()} for image in images])

    def get_next(self):
        return next(self._items, None)


def onnxruntime_model(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor | None = None) -> RuntimeModel:
    """``model`` exported to ONNX (torch's dynamo exporter, dynamic batch) and run by onnxruntime's CPU
    provider in fp32, all graph optimisations on; with ``calibration`` images, first quantized by
    onnxruntime's static post-training quantization (QDQ, INT8 weights per channel, UINT8 activations)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UsageError(f"onnxruntime is not installed ({e}): pip install -e '.[deploy]'") from None
    label = "fp32"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        info = ModelInfo(config=model.cfg)
        with torch.no_grad():  # the export `convnext export` writes (dynamo exporter, dynamic batch)
            write_onnx(model.eval(), example, path, export_dynamic_shapes(info, True, False), info, None)
        if calibration is not None:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # per-tensor notes about LayerNorm weights, logged on the root logger
            try:
                prepared, quantized = os.path.join(folder, "p.onnx"), os.path.join(folder, "q.onnx")
                quant_pre_process(path, prepared)
                quantize_static(prepared, quantized, _Images(calibration, INPUT_NAME), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            path, label = quantized, "int8"
        with open(path, "rb") as f:
            data = f.read()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return RuntimeModel(lambda a: session.run([OUTPUT_NAME], {INPUT_NAME: a})[0], label)


__all__ = ["RuntimeModel", "onnxruntime_model", "openvino_model"]
