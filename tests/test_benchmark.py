"""The benchmark runner on a micro setting: interleaving, statistics, ratios, memory, JSON and CLI.

No timing assertions: only structure, arithmetic on the recorded times, and call order."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from convnext.cli import main
from convnext.infer import benchmark as bench
from convnext.infer.benchmark import Candidate, format_table, measure, peak_memory_mib, run_benchmark


class Recorder(nn.Module):
    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x.mean()


def test_models_are_timed_round_robin():
    log: list[str] = []
    cands = [Candidate(n, lambda: None, module=Recorder(n, log)) for n in "abc"]
    rows = measure(cands, (1, 2), 32, torch.device("cpu"), warmup=2, iters=4, memory=False)
    # per batch size: 2 warmup rounds then 4 timed rounds, each round runs every model once, in order
    assert log == list("abc") * 6 * 2
    assert [(r["model"], r["batch"]) for r in rows] == [(n, b) for b in (1, 2) for n in "abc"]
    for r in rows:
        ts = r["times_ms"]
        assert len(ts) == 4
        assert r["median_ms"] == pytest.approx(sorted(ts)[1] / 2 + sorted(ts)[2] / 2, abs=1e-3)
        assert r["throughput_img_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
        assert r["min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= max(ts) + 1e-3


def test_percentile_by_hand():
    assert bench._percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert bench._percentile(list(range(1, 21)), 0.95) == pytest.approx(19.05)
    assert bench._percentile([7.0], 0.95) == 7.0


class Allocates(nn.Module):
    """Needs a known 4 MiB intermediate on top of its 1024 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1024))

    def forward(self, x):
        big = torch.ones(1024, 1024)  # 4 MiB, freed on return
        return (big.sum() + x.sum()) * self.w


def test_peak_memory_sees_intermediate_allocations():
    c = Candidate("alloc", lambda: None, module=Allocates())
    with torch.inference_mode():
        mib = peak_memory_mib(c, torch.zeros(1), torch.device("cpu"))
    assert 4.0 <= mib < 4.5  # 4 MiB intermediate + 4 KiB parameters + a few small tensors


def test_ratios_use_the_faster_timm_setting():
    rows = [
        {"model": "ours", "batch": 8, "throughput_img_s": 12.0, "p50_ms": 600.0},
        {"model": "timm_convnext_tiny (channels_last)", "batch": 8, "throughput_img_s": 10.0, "p50_ms": 800.0},
        {"model": "timm_convnext_tiny (NCHW)", "batch": 8, "throughput_img_s": 8.0, "p50_ms": 1000.0},
        {"model": "ours", "batch": 1, "throughput_img_s": 5.0, "p50_ms": 200.0},
    ]
    bench.add_ratios(rows)
    assert rows[0]["vs_timm_throughput"] == pytest.approx(1.2)
    assert rows[0]["vs_timm_p50"] == pytest.approx(0.75)
    assert rows[0]["timm_reference"] == "timm_convnext_tiny (channels_last)"
    assert rows[2]["vs_timm_throughput"] == pytest.approx(0.8)
    assert "vs_timm_throughput" not in rows[3]  # no timm row at batch 1


def test_micro_run_with_timm_peer(monkeypatch):
    pytest.importorskip("timm")
    # the runner is what is tested here: timm's smallest ConvNeXt stands in for convnext_tiny to stay fast
    monkeypatch.setitem(bench.PEER_BUILDERS, "timm_convnext_tiny", ("timm", lambda: bench._timm("convnext_atto")))
    result = run_benchmark("convnext_atto", batch_sizes=(1, 2), resolution=32, warmup=0, iters=2,
                           peers=("timm_convnext_tiny",), ablation=True, num_classes=10)
    names = [r["model"] for r in result["results"] if r["batch"] == 1]
    assert names == [
        "convnext_atto eager (NCHW)", "convnext_atto eager (channels_last)", "convnext_atto +fold",
        "convnext_atto +fold +NHWC GEMM blocks", "convnext_atto fast",
        "timm_convnext_tiny (channels_last)", "timm_convnext_tiny (NCHW)",
    ]
    assert len(result["results"]) == 14
    for r in result["results"]:
        assert len(r["times_ms"]) == 2 and r["peak_mem_mib"] > 0
        ref = next(x for x in result["results"] if x["model"] == r["timm_reference"] and x["batch"] == r["batch"])
        assert r["vs_timm_throughput"] == pytest.approx(r["throughput_img_s"] / ref["throughput_img_s"])
    # parameters alone: convnext_atto is 3.7M fp32 parameters with 1000 classes (timm), 3.4M with 10 (ours)
    mem = {r["model"]: r["peak_mem_mib"] for r in result["results"] if r["batch"] == 1}
    assert mem["convnext_atto fast"] > 3.3e6 * 4 / 2**20
    assert mem["timm_convnext_tiny (NCHW)"] > 3.69e6 * 4 / 2**20
    assert result["precision"] == "fp32" and "fp32" in result["precision_note"]
    assert len(result["loadavg_before"]) == 3 and result["iters"] == 2
    json.dumps(result)  # JSON-ready
    table = format_table(result)
    assert "convnext_atto fast" in table and "vs timm" in table and "load average" in table


def test_missing_package_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(bench, "_installed", lambda module: module != "torchvision")
    cands, skipped = bench.peer_candidates(("tv_resnet50", "tv_swin_t"), torch.device("cpu"), None)
    assert cands == [] and skipped == ["tv_resnet50: torchvision is not installed",
                                       "tv_swin_t: torchvision is not installed"]


@pytest.mark.parametrize("kw, match", [
    (dict(batch_sizes=(0,)), "positive"),
    (dict(resolution=16), "total stride"),
    (dict(iters=0), "iters"),
    (dict(peers=("alexnet",)), "unknown peer"),
    (dict(precision="fp16"), "fp16 is for GPUs"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        run_benchmark("convnext_atto", **kw)


def test_cli_json_output_file(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["benchmark", "convnext_atto", "--batch-sizes", "1", "--size", "32", "--warmup", "0", "--iters", "1",
               "--peers", "--no-memory", "--json", "-o", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["results"]] == ["convnext_atto eager (channels_last)", "convnext_atto fast"]
    assert printed["results"][0]["model"] == saved["results"][0]["model"]
    assert "peak_mem_mib" not in saved["results"][0]


def test_cli_bad_input_exits_2(capsys):
    assert main(["benchmark", "convnext_atto", "--batch-sizes", "0", "--peers"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch sizes" in err
    assert main(["benchmark", "convnext_nope", "--peers"]) == 2


def test_cpu_benchmark_output_holds_no_native_error_lines(tmp_path):
    # the profiler's tracer logs "ERROR: ... gpuGetDeviceCount failed" on machines without a GPU
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "convnext", "benchmark", "convnext_atto", "--batch-sizes", "1",
                        "--size", "32", "--warmup", "1", "--iters", "1", "--peers", "--device", "cpu"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ERROR" not in r.stderr and "ERROR" not in r.stdout
    assert "convnext_atto" in r.stdout


def _tiny_model_and_outputs():
    """A seeded tiny ConvNeXt, 5 images and its logits on them: what the runtime rows must reproduce."""
    import convnext

    torch.manual_seed(0)
    model = convnext.create_model("convnext_atto", num_classes=10, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)).eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        return model, x, model(x)


def test_runtime_peers_run_our_model_with_the_same_outputs():
    """OpenVINO (fp32, NNCF INT8) and onnxruntime rows are our model, not some other network."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from convnext.infer.runtimes import onnxruntime_model, openvino_model

    model, x, ref = _tiny_model_and_outputs()
    for runtime in (openvino_model(model, x[:2]), onnxruntime_model(model, x[:2])):
        torch.testing.assert_close(runtime(x), ref, atol=1e-4, rtol=1e-4)
        assert runtime.precision == "fp32"
    ort_int8 = onnxruntime_model(model, x[:2], calibration=torch.randn(32, 3, 64, 64))
    assert ort_int8.precision == "int8"
    assert 0 < (ort_int8(x) - ref).abs().max() < ref.abs().max()  # quantized: close, not equal
    if importlib.util.find_spec("nncf") is not None:  # OpenVINO's INT8 (the deploy extra; not in the test extra)
        int8 = openvino_model(model, x[:2], calibration=torch.randn(32, 3, 64, 64))
        assert int8.precision == "int8" and int8(x).shape == ref.shape


def test_runtime_rows_include_openvino_bf16_where_asked_and_say_why_not_elsewhere():
    from convnext.infer.benchmark import runtime_candidates

    with_bf16, skipped = runtime_candidates("convnext_atto", 64, 10, bf16=True)
    without, skipped_without = runtime_candidates("convnext_atto", 64, 10, bf16=False)
    names = lambda rows: [c.name for c in rows]  # noqa: E731
    if importlib.util.find_spec("openvino") is not None:
        assert "convnext_atto openvino bf16" in names(with_bf16)
        assert "convnext_atto openvino bf16" not in names(without)
        assert any(s.startswith("openvino bf16: this CPU has no native bf16") for s in skipped_without)
    if importlib.util.find_spec("onnxruntime") is not None:
        assert any(s.startswith("onnxruntime bf16:") for s in skipped)


def test_openvino_bf16_runs_our_model():
    pytest.importorskip("openvino")
    from convnext.infer.runtimes import openvino_model

    model, x, ref = _tiny_model_and_outputs()
    bf16 = openvino_model(model, x[:2], "bf16")
    assert bf16.precision == "bf16"
    torch.testing.assert_close(bf16(x), ref, atol=0.05 * ref.abs().max().item(), rtol=0)
