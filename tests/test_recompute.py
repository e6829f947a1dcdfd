"""Gradient checkpointing (train/recompute.py): the same numbers as the plain model, bit for bit, for a fraction
of the memory kept for backward, in the model and in the training engine."""

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils import checkpoint as torch_checkpoint

import convnext
from convnext.models.convnext import Block
from convnext.train import train
from convnext.train.accelerate import TrainingBlock, accelerate_for_training
from convnext.train.loop import Trainer
from convnext.train.distributed import DistInfo
from convnext.train.recompute import CheckpointedBlock, is_grad_checkpointing, set_grad_checkpointing
from train_helpers import benchmark_script, comparable, run_dir, run_script, tiny_config, weights

ROOT = Path(__file__).resolve().parents[1]


def saved_activation_bytes(model, x):
    """(output, bytes kept for backward besides the weights): the benchmark's own measure
    (benchmarks/grad_checkpointing.py ``kept_bytes``), so the test and the published numbers count alike."""
    return benchmark_script("grad_checkpointing.py").kept_bytes(model, x)


CASES = {
    # the paper's block (LayerNorm) with stochastic depth, through the CPU engine's TrainingBlock: the second run of
    # each block must drop the same samples
    "convnext_atto": (dict(drop_path_rate=0.3, depths=(2, 2, 2, 2), dims=(16, 32, 64, 128)), 64, 0.3),
    # BatchNorm: the second run must not count its batch in the running statistics again
    "convnext_micro_bn_small_input": (dict(in_chans=1, num_classes=10), 28, 0.45),
    # ResNet-50's bottleneck (the roadmap's start): BatchNorm after every conv, projection shortcuts, ReLU after the add
    "resnet50": (dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), num_classes=10), 64, 0.8),
}


@pytest.mark.parametrize("name", CASES)
def test_checkpointed_blocks_train_bit_for_bit_like_plain_ones_and_keep_less(name):
    kw, size, most = CASES[name]
    torch.manual_seed(0)
    plain = convnext.create_model(name, **kw).train()
    accelerate_for_training(plain, "cpu")
    checkpointed = copy.deepcopy(plain)
    blocks = sum(isinstance(m, Block) for m in plain.modules())
    assert convnext.set_grad_checkpointing(checkpointed) == blocks > 0
    assert is_grad_checkpointing(checkpointed) and not is_grad_checkpointing(plain)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    x = torch.randn(6, plain.cfg.in_chans, size, size)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same stochastic-depth draws for both
        out, kept = saved_activation_bytes(model, x)
        out.square().mean().backward()
        results.append((out, kept))
    (out_a, kept_a), (out_b, kept_b) = results
    assert torch.equal(out_a, out_b)
    for (key, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), key
    for (key, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(b, c), key  # BatchNorm's running statistics: one update per training forward
    if name != "convnext_atto":
        bn = next(m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert bn.num_batches_tracked.item() == 1 and not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    # what stays in memory for backward: the blocks' inputs and the stem's, downsamplings' and head's activations
    assert kept_b < most * kept_a, (kept_b, kept_a)


def test_the_second_run_of_a_batchnorm_block_would_count_its_batch_twice_without_the_restore(monkeypatch):
    # the restore is what keeps the statistics right: without it the running statistics differ
    from convnext.train import recompute

    monkeypatch.setattr(recompute, "_running_stats_kept", lambda block: contextlib.nullcontext())
    torch.manual_seed(0)
    plain = convnext.create_model("convnext_micro_bn_small_input", in_chans=1, num_classes=10).train()
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed)
    x = torch.randn(4, 1, 28, 28)
    for model in (plain, checkpointed):
        model(x).sum().backward()
    norm = "stages.0.blocks.0.norm.num_batches_tracked"
    assert plain.state_dict()[norm].item() == 1 and checkpointed.state_dict()[norm].item() == 2


def test_switching_it_off_gives_each_block_its_own_class_back(monkeypatch):
    model = convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.1)
    accelerate_for_training(model, "cpu")
    assert {type(m) for m in model.modules() if isinstance(m, Block)} == {TrainingBlock}
    assert set_grad_checkpointing(model) == 4 and set_grad_checkpointing(model) == 0  # already on: nothing changes
    assert {type(m).__name__ for m in model.modules() if isinstance(m, Block)} == {"CheckpointedTrainingBlock"}
    assert all(isinstance(m, (CheckpointedBlock, TrainingBlock)) for m in model.modules() if isinstance(m, Block))
    # eval mode and no-grad forwards (validation, the EMA copy) run the block as it is, without a checkpoint
    calls = []
    original = torch_checkpoint.checkpoint
    monkeypatch.setattr("convnext.train.recompute.checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)
    model.eval()(x)
    assert calls == []
    model.train()(x).sum().backward()
    assert len(calls) == 4  # one checkpoint per block
    assert set_grad_checkpointing(model, enabled=False) == 4
    assert {type(m) for m in model.modules() if isinstance(m, Block)} == {TrainingBlock}
    assert not is_grad_checkpointing(model)


def test_a_checkpointed_model_pickles_whole_and_comes_back_checkpointed(monkeypatch):
    # torch.save(model) and spawned workers pickle the model itself; its block classes are made at run time, so a
    # block names its own class and the checkpointed one is made again where it is unpickled (here: with no
    # class made yet, as in a fresh process)
    from convnext.train import recompute

    model = convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.1)
    accelerate_for_training(model, "cpu")
    set_grad_checkpointing(model)
    assert type(copy.deepcopy(model).stages[0].blocks[0]) is type(model.stages[0].blocks[0])  # the EMA's copy
    buffer = io.BytesIO()
    torch.save(model, buffer)
    monkeypatch.setattr(recompute, "_CHECKPOINTED", {})
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # our own object, made just above
    assert [type(m).__name__ for m in loaded.modules() if isinstance(m, Block)] == ["CheckpointedTrainingBlock"] * 4
    assert all(isinstance(m, (CheckpointedBlock, TrainingBlock)) for m in loaded.modules() if isinstance(m, Block))
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for net in (model, loaded):
        torch.manual_seed(0)
        outs.append(net.train()(x))
        outs[-1].sum().backward()
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), loaded.parameters()))
    assert set_grad_checkpointing(loaded, enabled=False) == 4  # and it comes off again


def test_a_checkpointed_training_run_is_the_plain_run_bit_for_bit(tmp_path):
    # the engine: stochastic depth, EMA, the batch-norm demo model in channels_last with the CPU swaps; the same
    # step losses, weights, EMA weights and validation numbers
    over = {"model.name": "convnext_micro_bn_small_input", "model.overrides": {}, "data.image_size": 28,
            "runtime.channels_last": True, "reg.ema": True, "data.synthetic_samples": 32}
    plain = train(tiny_config(tmp_path / "plain", **over))
    checkpointed = train(tiny_config(tmp_path / "ckpt", **over, **{"runtime.grad_checkpointing": True}))
    assert comparable(plain["history"]) == comparable(checkpointed["history"])
    for name in ("last.safetensors", "last_ema.safetensors"):
        a, b = weights(run_dir(tmp_path / "plain") / name), weights(run_dir(tmp_path / "ckpt") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    def records(out):
        return comparable(json.loads(line) for line in (run_dir(out) / "metrics.jsonl").read_text().splitlines())

    assert records(tmp_path / "plain") == records(tmp_path / "ckpt")


def test_the_trainer_checkpoints_the_blocks_it_trains_and_a_resume_may_switch_it(tmp_path):
    over = {"reg.drop_path": 0.2, "runtime.max_steps": 3, "runtime.save_every_steps": 1}
    trainer = Trainer(tiny_config(tmp_path, **over, **{"runtime.grad_checkpointing": True}), DistInfo())
    assert is_grad_checkpointing(trainer.model)
    assert {type(m).__name__ for m in trainer.model.modules() if isinstance(m, Block)} == {"CheckpointedTrainingBlock"}
    train(tiny_config(tmp_path / "a", **over, **{"runtime.grad_checkpointing": True}))
    # memory, not the numbers: a run may resume with it switched off (a runtime.* setting)
    s = train(tiny_config(tmp_path / "a", **{"reg.drop_path": 0.2, "runtime.resume": "auto"}))
    assert s["steps"] == 16


def test_a_checkpointed_two_process_run_matches_one_process(tmp_path):
    # DistributedDataParallel with checkpointed blocks: each rank's backward runs its blocks again while DDP
    # reduces the gradients; the result is the one-process run on the same samples
    from test_distributed import two_processes_and_one

    ddp, single = two_processes_and_one(tmp_path, {"runtime.grad_checkpointing": True},
                                        **{"runtime.channels_last": True})
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-4)
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-3)


def test_the_benchmark_measures_both_ways_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    """benchmarks/grad_checkpointing.py: what each way keeps for backward (the checkpointed way much less), the same
    first loss, both timed in every round; a bad count is one line and exit 2 with no JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "gc.json"
    cmd = [sys.executable, "benchmarks/grad_checkpointing.py", "--model", "convnext_atto", "--size", "64",
           "--batch", "2", "--steps", "1"]
    subprocess.run([*cmd, "--rounds", "2", "--out", str(out)], check=True, cwd=ROOT, env=env, capture_output=True)
    r = json.loads(out.read_text())
    assert r["complete"] and r["rounds"] == 2 and {n: len(v) for n, v in r["img_s"].items()} == {
        "plain": 2, "checkpointed": 2}
    assert r["same_first_loss"] and r["ways"]["plain"]["first_loss"] == r["ways"]["checkpointed"]["first_loss"]
    assert r["ways"]["checkpointed"]["kept_mb"] < 0.25 * r["ways"]["plain"]["kept_mb"]
    assert r["kept_ratio"] == round(r["ways"]["checkpointed"]["kept_mb"] / r["ways"]["plain"]["kept_mb"], 3)
    bad = run_script("grad_checkpointing.py", [*cmd[2:], "--rounds", "0", "--out", tmp_path / "bad.json"],
                     monkeypatch, capsys)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--rounds must be >= 1" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_the_gpu_checks_memory_step_runs_the_benchmark_and_reports_it(tmp_path):
    """benchmarks/gpu_check.sh's `memory` step, dry-run on the CPU: the benchmark's JSON comes back and the summary's
    headline carries both ways and their ratios, as a GPU session would read them."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable,
           "GPU_CHECK_STEPS": "memory", "TMPDIR": str(tmp_path)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, check=True, capture_output=True,
                   timeout=300)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (step,) = summary["steps"]
    assert summary["all_ok"] and step["step"] == "memory" and step["output"] == "grad_checkpointing.json"
    head = step["headline"]
    assert head["complete"] and head["same_first_loss"] and 0 < head["kept_ratio"] < 0.25
    assert set(head["ways"]) == {"plain", "checkpointed"} and head["speed_ratio"] > 0
