"""INT8 post-training quantization (infer/quantize.py, `convnext quantize`): what is quantized, what stays
float, accuracy against the fp32 model on real Fashion-MNIST images, the INT8 file round trip, and bad input.

The checkpoint is the shared tiny trained one (tests/infer_fixtures.py); calibration images come from the
training split and agreement is measured on test-split images.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchao", reason="INT8 quantization needs torchao (pip install -e '.[deploy]')")
if not __import__("convnext.infer.quantize", fromlist=["x"]).torch_supports_int8():
    pytest.skip("INT8 quantization needs torch >= 2.12 (see convnext.infer.quantize.MIN_TORCH)", allow_module_level=True)

from convnext.checkpoint import load_model, read_quantization  # noqa: E402
from convnext.errors import CheckpointError, UsageError  # noqa: E402
from convnext.infer import quantize as q  # noqa: E402

from infer_fixtures import checkpoint, fashion, to_input  # noqa: E402,F401
from reliability_helpers import train_argv  # noqa: E402
from train_helpers import run_cli  # noqa: E402

@pytest.fixture
def cli(capsys):
    """Run `convnext ARGS` in this process (a subprocess would import torch and torchao again: ~5 s each)."""
    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, *run_cli(args, capsys))
    return run


@pytest.fixture(scope="module")
def float_model(checkpoint):  # noqa: F811
    return load_model(checkpoint)[0]


@pytest.fixture(scope="module")
def calibration():
    return to_input(fashion("train", 256)[0])


@pytest.fixture(scope="module")
def test_images():
    x, y = fashion("t10k", 1000)
    return to_input(x), torch.from_numpy(y.astype("int64"))


@pytest.fixture(scope="module")
def int8(float_model, calibration):
    return q.quantize(float_model, calibration)


def _node_targets(graph) -> list[str]:
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]


def test_every_conv_and_linear_is_int8_except_the_kept_float_layers(float_model, int8):
    convs = [m for m in float_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    kept = [m for name in q.KEEP_FLOAT for m in float_model.get_submodule(name).modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    targets = _node_targets(int8.graph)
    weights_int8 = sum("dequantize_per_channel" in t for t in targets)  # one per INT8 weight
    assert len(kept) == 2 and weights_int8 == len(convs) - len(kept)
    assert any("quantize_per_tensor" in t for t in targets)  # activations too
    assert not any("layer_norm" in t and "quant" in t for t in targets)
    assert int8.precision == "int8" and int8.cfg == float_model.cfg and not int8.training


def test_quantizing_everything_puts_the_stem_and_head_in_int8_too(float_model, calibration):
    convs = [m for m in float_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    everything = q.quantize(float_model, calibration, keep_float=(), compile=False)
    assert sum("dequantize_per_channel" in t for t in _node_targets(everything.graph)) == len(convs)


def test_int8_agrees_with_fp32_on_test_images(float_model, int8, test_images):
    x, y = test_images
    with torch.no_grad():
        ref = float_model(x)
    got = int8(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    agreement = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    acc_fp32 = (ref.argmax(1) == y).float().mean().item()
    acc_int8 = (got.argmax(1) == y).float().mean().item()
    assert agreement >= 0.97, agreement
    assert abs(acc_int8 - acc_fp32) <= 0.02, (acc_fp32, acc_int8)
    assert acc_fp32 > 0.5  # the model learned something, so agreement is not chance


def test_compiled_kernels_match_the_reference_ops(int8, test_images):
    """inductor's oneDNN INT8 kernels against the converted graph's reference quantize/dequantize ops."""
    x = test_images[0][:200]
    compiled = int8(x)  # compiles on the first call, where a compiler is available
    if not int8.compiled:  # none here: both sides would run the same eager graph, which proves nothing
        pytest.skip("inductor did not compile the INT8 graph on this machine")
    reference = q.QuantizedModel(int8.graph, int8._state, int8.cfg, int8.input_size, int8.keep_float, compile=False)(x)
    assert (compiled.argmax(1) == reference.argmax(1)).float().mean().item() >= 0.99
    torch.testing.assert_close(compiled, reference, atol=0.15, rtol=0.05)


def test_batches_of_any_size_give_the_same_answers(int8, test_images):
    x = test_images[0][:200]
    whole = int8(x)  # each new size compiles once (which sizes other tests compiled depends on the xdist worker)
    assert 200 in int8._sizes
    # past MAX_BATCH_SIZES compiled sizes, a batch is padded up to a compiled size or chunked: no new compile
    capped = q.QuantizedModel(int8.graph, int8._state, int8.cfg, int8.input_size, int8.keep_float)
    capped.MAX_BATCH_SIZES = 1
    torch.testing.assert_close(capped(x), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(capped(x[:5]), whole[:5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(capped(torch.cat([x, x[:10]])), torch.cat([whole, whole[:10]]), atol=1e-5, rtol=1e-5)
    assert capped._sizes == {200}
    with pytest.raises(ValueError, match=r"quantized for \(N, 1, 32, 32\)"):
        int8(torch.zeros(2, 1, 28, 28))


def test_int8_file_round_trip(int8, checkpoint, tmp_path, test_images):  # noqa: F811
    path = q.save_quantized(int8, tmp_path / "int8.safetensors")
    record = read_quantization(path)
    assert record["scheme"] == q.SCHEME and record["keep_float"] == list(q.KEEP_FLOAT)
    assert record["input_size"] == [1, 32, 32]
    loaded, _ = q.load_quantized(path, compile=False)
    eager = q.QuantizedModel(int8.graph, int8._state, int8.cfg, int8.input_size, int8.keep_float, compile=False)
    x = test_images[0][:16]
    assert torch.equal(loaded(x), eager(x))  # same observers -> same scales -> the same INT8 graph
    # the file is plain safetensors: no pickle anywhere on the way in
    assert path.read_bytes()[8:9] == b"{"


def test_train_mode_is_refused(int8):
    with pytest.raises(RuntimeError, match="eval-only"):
        int8.train()


@pytest.mark.parametrize("calibration, message", [
    (torch.zeros(0, 1, 32, 32), "got 0 calibration image"),
    (torch.randn(8, 1, 32, 32), "got 8 calibration image.*at least 32"),
    (torch.randn(40, 3, 32, 32), "3 channel.*model takes 1"),
    (torch.full((40, 1, 32, 32), float("nan")), "finite"),
    (torch.randn(40, 32, 32), r"\(N, C, H, W\)"),
    ([torch.randn(20, 1, 32, 32), torch.randn(20, 1, 28, 28)], "mix sizes"),
    (["not a tensor"], "got str"),
])
def test_bad_calibration_is_refused(float_model, calibration, message):
    with pytest.raises(UsageError, match=message):
        q.quantize(float_model, calibration)


def test_calibration_from_a_loader_of_pairs(float_model, calibration):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(calibration, torch.zeros(len(calibration))),
                                         batch_size=50)
    model = q.quantize(float_model, loader, compile=False)
    assert model.input_size == (1, 32, 32)


def test_unknown_float_layer_and_diverged_weights_are_refused(float_model, calibration):
    with pytest.raises(UsageError, match="not submodules"):
        q.quantize(float_model, calibration, keep_float=("stemm",))
    bad = copy.deepcopy(float_model)
    with torch.no_grad():
        bad.head.fc.weight[0, 0] = float("inf")
    with pytest.raises(UsageError, match="non-finite"):
        q.quantize(bad, calibration)


def test_missing_torchao_is_a_one_line_install_hint(monkeypatch, float_model, calibration):
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)
    with pytest.raises(UsageError, match=r"needs torchao.*pip install -e '\.\[deploy\]'"):
        q.quantize(float_model, calibration)


def test_a_torch_whose_export_drops_what_the_quantizer_matches_is_refused_in_one_line(monkeypatch, float_model,
                                                                                       calibration):
    # torch 2.11's export annotates nothing for the x86 quantizer (pytorch/ao#3914): an "INT8" model would be float
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    assert not q.torch_supports_int8()
    with pytest.raises(UsageError, match=r"needs torch >= 2\.12: torch 2\.11\.0\+cu130's torch\.export drops"):
        q.quantize(float_model, calibration)


def test_int8_file_is_refused_by_commands_that_need_float_weights(int8, tmp_path, cli):
    path = q.save_quantized(int8, tmp_path / "int8.safetensors")
    with pytest.raises(CheckpointError, match="INT8 model from convnext quantize.*float checkpoint"):
        load_model(path)
    from PIL import Image
    (tmp_path / "images").mkdir()
    Image.fromarray(fashion("t10k", 1)[0][0]).save(tmp_path / "images" / "a.png")
    for args in (["convert", path, tmp_path / "x.safetensors", "--to", "timm"],
                 ["export", path, "-o", tmp_path / "x.onnx"],
                 ["info", path],
                 ["predict", path, tmp_path / "images", "--precision", "bf16"],
                 ["predict", path, tmp_path / "images", "--device", "cuda"],
                 ["eval", path, "--fast"],
                 train_argv(tmp_path / "out", "--model.init", str(path))):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "INT8" in lines[0], (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "int8.safetensors"]


def test_quantize_command_then_predict_and_eval_run_the_int8_file(checkpoint, tmp_path, cli):  # noqa: F811
    out = tmp_path / "int8.safetensors"
    r = cli("quantize", checkpoint, "--calibration", "fashion_mnist", "--images", 256, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["calibration_images"] == 256 and summary["top1_agreement"] >= 95
    assert r.stderr == ""  # no torch log noise
    # an existing output is kept unless --force
    before = out.read_bytes()
    r = cli("quantize", checkpoint, "--calibration", "fashion_mnist", "-o", out)
    assert r.returncode == 2 and "--force" in r.stderr and out.read_bytes() == before
    # eval runs it on CPU; its top-1 is close to the float checkpoint's on the same images
    # (one batch size throughout, the calibration's: one compilation per loaded model)
    int8_eval = json.loads(cli("eval", out, "--dataset", "fashion_mnist", "--limit", 512, "--batch-size", 256,
                               "--json").stdout)
    fp32_eval = json.loads(cli("eval", checkpoint, "--dataset", "fashion_mnist", "--limit", 512, "--json",
                               "--device", "cpu").stdout)
    assert int8_eval["precision"] == "int8" and int8_eval["count"] == 512
    assert abs(int8_eval["top1"] - fp32_eval["top1"]) <= 2.0
    # predict reads image files through the same preprocessing
    from PIL import Image
    x, _ = fashion("t10k", 4)
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
    r = cli("predict", out, *sorted(tmp_path.glob("img*.png")), "--json", "--topk", 1)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"]) == 4


@pytest.mark.parametrize("args, message", [
    (["--images", "8"], "at least 32"),
    (["-o", "{tmp}/int8.pt"], r"\.safetensors"),
    (["--calibration", "{tmp}/empty"], "calibration"),
    (["--keep-float", "stem,nothing"], "not submodules"),
])
def test_quantize_command_bad_input(checkpoint, tmp_path, args, message, cli):  # noqa: F811
    (tmp_path / "empty").mkdir()
    base = {"--calibration": "fashion_mnist", "-o": f"{tmp_path}/int8.safetensors"}
    args = [a.format(tmp=tmp_path) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    r = cli("quantize", checkpoint, *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and re.search(message, r.stderr), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_eval_scores_each_precision_with_its_agreement(checkpoint, cli):  # noqa: F811
    r = cli("eval", checkpoint, "--dataset", "fashion_mnist", "--limit", 256, "--batch-size", 256,
            "--precision", "fp32,bf16,int8", "--calibration", "fashion_mnist", "--calibration-images", 64, "--json",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rows = {row["precision"]: row for row in d["precisions"]}
    assert list(rows) == ["fp32", "bf16", "int8"]
    assert rows["fp32"]["top1_agreement"] == 100.0 and d["top1"] == rows["fp32"]["top1"]
    assert rows["bf16"]["top1_agreement"] >= 97 and rows["int8"]["top1_agreement"] >= 95
    r = cli("eval", checkpoint, "--dataset", "fashion_mnist", "--limit", 10, "--precision", "int8")
    assert r.returncode == 2 and "--calibration" in r.stderr
    r = cli("eval", checkpoint, "--dataset", "fashion_mnist", "--limit", 10, "--precision", "int4")
    assert r.returncode == 2 and "int4" in r.stderr
