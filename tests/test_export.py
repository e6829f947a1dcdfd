import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.checkpoint import load_model
from convnext.cli import main
from convnext.infer.export import (
    ExportVerificationError,
    export_checkpoint,
    read_export_metadata,
)
from convnext.data.images import load_batch

from infer_fixtures import CLASSES, checkpoint, fashion  # noqa: F401

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fashion_batch(checkpoint, tmp_path_factory):
    """Real Fashion-MNIST test images through the checkpoint's own preprocessing."""
    from convnext.checkpoint import read_info

    x, _ = fashion("t10k", 7)
    root = tmp_path_factory.mktemp("fmnist")
    paths = []
    for i, img in enumerate(x):
        Image.fromarray(img).save(root / f"{i}.png")
        paths.append(root / f"{i}.png")
    return paths, read_info(checkpoint)


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_export_dynamic_batch_and_hw_matches_pytorch(checkpoint, fashion_batch, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code = main(["export", str(checkpoint), "--format", "onnx", "--dynamic-hw", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "verified batch 1 at 64x64" in printed and "verified batch 3 at 64x64" in printed
    assert "verified batch 3 at 99x128" in printed and printed.strip().endswith("OK")
    session = _session(out)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.shape == ["batch", 1, "height", "width"]
    assert outp.name == "logits" and outp.shape == ["batch", 10]
    # independent parity check on real images at two batch sizes and two resolutions
    model, info = load_model(checkpoint)
    paths, _ = fashion_batch
    batch, errors = load_batch(paths, info.preprocess)
    assert not errors and batch.shape == (7, 1, 32, 32)
    for x in (batch[:2], torch.nn.functional.interpolate(batch, size=(64, 96), mode="bilinear")):
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        diff = np.abs(got - expected).max()
        print(f"onnxruntime vs PyTorch, input {tuple(x.shape)}: max abs diff {diff:.2e}")
        assert diff < 1e-4
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    # the file carries what a deployment needs to preprocess and name classes
    meta = read_export_metadata(out)
    assert meta.class_names == CLASSES and meta.preprocess == info.preprocess and meta.config == info.config


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_and_torch_export_round_trip(checkpoint, fashion_batch, tmp_path, capsys):
    model, info = load_model(checkpoint)
    paths, _ = fashion_batch
    batch, _ = load_batch(paths, info.preprocess)
    with torch.no_grad():
        expected = model(batch)
    ts = export_checkpoint(checkpoint, tmp_path / "m.pt", "torchscript")
    assert [(c.batch, c.height) for c in ts.checks] == [(1, 32), (3, 32)] and ts.max_abs_diff <= 1e-4
    torch.testing.assert_close(torch.jit.load(str(ts.path))(batch), expected, atol=1e-5, rtol=0)

    assert main(["export", str(checkpoint), "-f", "torch-export", "-o", str(tmp_path / "m.pt2"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "torch-export" and len(doc["checks"]) == 2 and doc["max_abs_diff"] <= 1e-4
    program = torch.export.load(str(tmp_path / "m.pt2"))
    torch.testing.assert_close(program.module()(batch), expected, atol=1e-5, rtol=0)
    # the batch axis is dynamic, the resolution is not: its guard names the exported size (32) of dim 2
    with pytest.raises((AssertionError, RuntimeError), match=r"\[2\].*\b32\b"):
        program.module()(torch.zeros(2, 1, 64, 64))
    assert read_export_metadata(tmp_path / "m.pt2").class_names == CLASSES
    assert read_export_metadata(ts.path).preprocess.input_size == 32


def test_failed_verification_writes_nothing_and_keeps_old_file(checkpoint, tmp_path, capsys):
    pytest.importorskip("convnext.infer.fuse")
    out = tmp_path / "m.pt2"
    out.write_bytes(b"previous good export")
    # the fused model differs from the original by ~1e-7..1e-6, so a 1e-12 tolerance must fail
    with pytest.raises(ExportVerificationError, match="nothing written"):
        export_checkpoint(checkpoint, out, "torch-export", fast=True, tolerance=1e-12)
    assert out.read_bytes() == b"previous good export"
    assert not list(tmp_path.glob(".*.tmp"))
    old_ts = tmp_path / "m.pt"
    old_ts.write_bytes(b"previous torchscript")
    # overwriting is asked for (--force), yet a failed verification still keeps the old file
    assert main(["export", str(checkpoint), "-f", "torchscript", "-o", str(old_ts), "--fast", "--tolerance", "1e-12",
                 "--force"]) == 1
    assert old_ts.read_bytes() == b"previous torchscript"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ExportVerificationError" in err


def test_export_usage_errors_exit_2(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "-f", "torch-export", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "should end in .pt2" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.safetensors")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", str(checkpoint), "-f", "tflite"])
    assert e.value.code == 2


@pytest.mark.slow
def test_onnx_export_of_fused_model(checkpoint, tmp_path):
    pytest.importorskip("convnext.infer.fuse")
    result = export_checkpoint(checkpoint, tmp_path / "fast.onnx", "onnx", fast=True)
    assert result.fused_vs_original < 1e-4 and result.max_abs_diff < 1e-4
    model, info = load_model(checkpoint)
    x = torch.randn(4, 1, 32, 32)
    got = _session(result.path).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 1e-4


def test_openvino_ir_round_trip_on_real_images(checkpoint, fashion_batch, tmp_path, capsys):
    """--format openvino: .xml + .bin side by side, checked by OpenVINO's CPU plugin in fp32, any batch size
    (and, with --dynamic-hw, any resolution), the checkpoint's metadata inside the IR."""
    ov = pytest.importorskip("openvino")
    out = tmp_path / "ir" / "model.xml"
    assert main(["export", str(checkpoint), "-f", "openvino", "--dynamic-hw", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "openvino" and doc["max_abs_diff"] <= 1e-4 and len(doc["checks"]) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.bin", "model.xml"]  # no staging folder left
    model, info = load_model(checkpoint)
    paths, _ = fashion_batch
    batch, _ = load_batch(paths, info.preprocess)
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for x in (batch, torch.nn.functional.interpolate(batch, size=(48, 40), mode="bilinear")):
        with torch.no_grad():
            expected = model(x).numpy()
        got = compiled(x.numpy())[0]
        assert np.abs(got - expected).max() < 1e-4
    meta = read_export_metadata(out)
    assert meta.class_names == CLASSES and meta.preprocess == info.preprocess
    # an existing IR is kept unless --force
    before = out.read_bytes()
    assert main(["export", str(checkpoint), "-f", "openvino", "-o", str(out)]) == 2
    assert out.read_bytes() == before


def test_openvino_missing_is_an_install_hint(checkpoint, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["export", str(checkpoint), "-f", "openvino", "-o", str(tmp_path / "m.xml")]) == 2
    assert "pip install -e '.[deploy]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("fmt,precision,suffix", [
    ("onnx", "fp16", ".onnx"),
    pytest.param("torch-export", "bf16", ".pt2", marks=pytest.mark.slow),
    pytest.param("torchscript", "fp16", ".pt", marks=pytest.mark.slow),
    pytest.param("openvino", "fp16", ".xml", marks=pytest.mark.slow)])
def test_reduced_precision_export_stores_half_the_bytes_and_keeps_the_predictions(fmt, precision, suffix, checkpoint,
                                                                                    tmp_path, capsys):
    """--precision fp16/bf16: the file holds 16-bit weights (about half the fp32 file), takes and returns fp32, and
    predicts what the fp32 model predicts on real test images."""
    if fmt == "openvino":
        pytest.importorskip("openvino")
    x, _ = fashion("t10k", 64)
    model, info = load_model(checkpoint)
    from infer_fixtures import to_input

    images = to_input(x)
    with torch.no_grad():
        expected = model(images)
    sizes = {}
    for p in ("fp32", precision):
        out = tmp_path / p / f"model{suffix}"
        assert main(["export", str(checkpoint), "-f", fmt, "--precision", p, "-o", str(out), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["precision"] == p and doc["max_abs_diff"] <= doc["tolerance"]
        sizes[p] = out.stat().st_size + (out.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
    assert doc["fp32_vs_reduced"] > 0  # the rounding cost is measured, and is not zero
    assert sizes[precision] < 0.65 * sizes["fp32"]
    if fmt == "onnx":
        got = _session(out).run(None, {"image": images.numpy()})[0]
    elif fmt == "torch-export":
        with torch.no_grad():
            got = torch.export.load(str(out)).module()(images).numpy()
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(out))(images).numpy()
    else:
        import openvino as ov

        got = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(images.numpy())[0]
    assert got.dtype == np.float32
    agreement = (got.argmax(1) == expected.numpy().argmax(1)).mean()
    assert agreement >= 0.98, agreement
