"""The GPU path, on a machine with CUDA (skipped elsewhere): training in bf16 and fp16 (GradScaler), a training
step that never waits for the GPU, compile, resume, eval, predict and the inference fast path.

`benchmarks/gpu_check.sh` runs this file on a GPU machine. Every other test pins `runtime.device cpu` (CPU
semantics: bitwise resume, hand-computed values), so this file is where CUDA is exercised.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import convnext
from convnext.cli import main
from convnext.train import train
from convnext.train.distributed import DistInfo
from convnext.train.loop import Trainer
from infer_fixtures import checkpoint, fashion, to_input  # noqa: F401
from train_helpers import run_dir, tiny_config, weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = {"runtime.device": "cuda", "runtime.channels_last": True}


def _run(out, **over):
    return train(tiny_config(out, **{**CUDA, **over}))


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_training_on_cuda_learns(amp, tmp_path):
    s = _run(tmp_path, **{"runtime.amp": amp, "reg.ema": True, "reg.drop_path": 0.1, "opt.epochs": 3})
    losses = [h["train_loss"] for h in s["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert s["skipped_steps"] == 0
    w = weights(run_dir(tmp_path) / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    assert all(v.device.type == "cpu" for v in w.values())  # checkpoints load anywhere


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_training_step_never_waits_for_the_gpu(amp, tmp_path):
    cfg = tiny_config(tmp_path, **{**CUDA, "runtime.amp": amp, "reg.ema": True, "reg.drop_path": 0.1,
                                   "aug.mixup": 0.8, "aug.cutmix": 1.0, "opt.clip_grad": 1.0, "runtime.log_every": 50})
    trainer = Trainer(cfg, DistInfo(device=torch.device("cuda")))
    trainer.train_net.train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 4, (8,), device="cuda")
    trainer._train_step([(x, y)])  # first step: lazy initialisation (optimizer state, cuDNN plans) may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer._train_step([(x, y)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    t = trainer.tally.read()
    assert t["steps"] == 4 and t["bad"] == 0 and np.isfinite(t["loss_sum"])


def test_a_nan_step_on_cuda_is_skipped_without_touching_the_weights(tmp_path):
    cfg = tiny_config(tmp_path, **{**CUDA, "runtime.amp": "bf16", "reg.ema": True})
    trainer = Trainer(cfg, DistInfo(device=torch.device("cuda")))
    trainer.train_net.train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 4, (8,), device="cuda")
    trainer._train_step([(x, y)])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer._train_step([(x * float("nan"), y)])
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.state_dict().items())
    t = trainer.tally.read()
    assert t["steps"] == 2 and t["bad"] == 1 and t["run"] == 1


def test_resume_on_cuda_continues_the_run(tmp_path):
    over = {"runtime.amp": "bf16", "reg.ema": True, "opt.epochs": 2}
    whole = _run(tmp_path / "whole", **over)
    _run(tmp_path / "part", **over, **{"runtime.max_steps": 5})
    resumed = _run(tmp_path / "part", **over, **{"runtime.resume": "auto"})
    assert resumed["steps"] == whole["steps"] and resumed["resumed_from"]
    a, b = weights(run_dir(tmp_path / "whole") / "last.safetensors"), weights(run_dir(tmp_path / "part") / "last.safetensors")
    # GPU kernels (atomics in the depthwise backward) need not be bitwise reproducible; the run is the same
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4) for k in a)


def test_compiled_training_on_cuda_matches_eager(tmp_path):
    over = {"runtime.amp": "bf16", "reg.ema": True, "reg.drop_path": 0.1, "opt.update_freq": 2}
    eager = _run(tmp_path / "eager", **over)
    compiled = _run(tmp_path / "compiled", **over, **{"runtime.compile": True})
    for a, b in zip(eager["history"], compiled["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_fast_path_on_cuda_matches_the_model(checkpoint):
    model, _ = convnext.load_model(checkpoint)
    model = model.cuda().eval()
    x = to_input(fashion("t10k", 256)[0]).cuda()
    with torch.no_grad():
        ref = model(x)
        fp32 = convnext.optimize_for_inference(model, precision="fp32")
        out = fp32(x).float()
        # cuDNN may run fp32 convs in TF32 (PyTorch's default for convolutions) on both sides, with other algorithms
        # for the folded network: close, not to fp32's 1e-5
        assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
        assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
        for precision in ("bf16", "fp16"):
            fast = convnext.optimize_for_inference(model, precision=precision)
            assert fast.precision == precision
            assert (fast(x).float().argmax(1) == ref.argmax(1)).float().mean() >= 0.98


def test_eval_and_predict_on_cuda_agree_with_cpu(checkpoint, tmp_path, capsys):
    def run(argv):
        capsys.readouterr()
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)

    common = [str(checkpoint), "--dataset", "fashion_mnist", "--limit", "512", "--json"]
    cpu = run(["eval", *common, "--device", "cpu"])
    gpu = run(["eval", *common, "--device", "cuda"])
    assert abs(cpu["top1"] - gpu["top1"]) <= 0.4  # 2 of 512 images may flip on rounding
    x, _ = fashion("t10k", 4)
    paths = []
    for i, im in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    p_cpu = run(["predict", str(checkpoint), *map(str, paths), "--device", "cpu", "--json"])
    p_gpu = run(["predict", str(checkpoint), *map(str, paths), "--device", "cuda", "--json"])
    top = lambda r: [item["predictions"][0]["class"] for item in r["results"]]  # noqa: E731
    # predict's auto precision is bf16 on a GPU: an image near a class boundary may flip
    assert sum(a == b for a, b in zip(top(p_cpu), top(p_gpu))) >= 3
