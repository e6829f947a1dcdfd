"""Training under torch.compile (``runtime.compile true``): the same run as eager, with EMA, gradient
accumulation, stochastic depth, checkpoint/resume and DDP.

Marked slow: a cold inductor compile of even the tiny test network takes 1-5 minutes on the 2-core CI
machine (a warm cache ~40 s). `make test-all` runs them; so does benchmarks/gpu_check.sh on a GPU.
"""

import pytest
import torch

from convnext.train import train
from train_helpers import comparable, run_dir, tiny_config, weights
from convnext.train.logging import read_metrics
from convnext.train.state import load_train_state

pytestmark = pytest.mark.slow

FEATURES = {"runtime.compile": True, "reg.ema": True, "opt.update_freq": 2, "reg.drop_path": 0.2,
            "opt.epochs": 2, "data.synthetic_samples": 32}


def test_compiled_training_matches_eager_and_resumes_bitwise(tmp_path):
    eager = train(tiny_config(tmp_path / "eager", **{**FEATURES, "runtime.compile": False}))
    whole = train(tiny_config(tmp_path / "whole", **FEATURES))
    # the compiled network trains the same model as the eager one (inductor's kernels round differently)
    assert whole["steps"] == eager["steps"] == 4
    for a, b in zip(whole["history"], eager["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    we, ww = weights(run_dir(tmp_path / "eager") / "last.safetensors"), weights(run_dir(tmp_path / "whole") / "last.safetensors")
    assert all(torch.allclose(we[k], ww[k], rtol=1e-3, atol=1e-4) for k in we)

    # stop after the first epoch, resume for the second: bitwise the uninterrupted compiled run
    part = tmp_path / "part"
    train(tiny_config(part, **{**FEATURES, "runtime.max_steps": 2}))
    resumed = train(tiny_config(part, **{**FEATURES, "runtime.resume": "auto"}))
    assert resumed["steps"] == 4 and resumed["resumed_from"]
    wr = weights(run_dir(part) / "last.safetensors")
    assert all(torch.equal(wr[k], ww[k]) for k in ww)
    sr, sw = load_train_state(run_dir(part)), load_train_state(run_dir(tmp_path / "whole"))
    assert all(torch.equal(sr["ema"][k], sw["ema"][k]) for k in sw["ema"])
    epochs = lambda d: [r for r in comparable(read_metrics(run_dir(d) / "metrics.jsonl")) if r["type"] == "epoch"]  # noqa: E731
    assert epochs(part) == epochs(tmp_path / "whole")


def test_compiled_two_process_run_matches_single_process(tmp_path):
    from test_distributed import two_processes_and_one

    ddp, single = two_processes_and_one(tmp_path, **{"runtime.compile": True})
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-3)
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-3)


def test_compiled_training_with_checkpointed_blocks_matches_eager(tmp_path):
    # under torch.compile the blocks' checkpoints go into the graph (inductor recomputes them in backward); the
    # batch-norm model, so the running statistics must come out as eager's too. eps 1 keeps AdamW's update
    # near-linear in the gradient, so inductor's rounding does not become lr-sized steps (as in test_train's
    # channels_last test)
    over = {"model.name": "convnext_micro_bn_small_input", "model.overrides": {}, "data.image_size": 28,
            "opt.epochs": 1, "data.synthetic_samples": 32, "opt.eps": 1.0, "opt.lr": 0.05}
    eager = train(tiny_config(tmp_path / "eager", **over))
    compiled = train(tiny_config(tmp_path / "compiled", **over, **{"runtime.compile": True,
                                                                   "runtime.grad_checkpointing": True}))
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
    a, b = weights(run_dir(tmp_path / "eager") / "last.safetensors"), weights(run_dir(tmp_path / "compiled") / "last.safetensors")
    assert "stem.norm.running_var" in a
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4) for k in a)
