"""Distributed training: sharding arithmetic, and a real 2-process gloo run under torchrun on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from convnext.train import train
from convnext.train.distributed import ShardedSampler
from train_helpers import NO_AUG, run_dir, tiny_config, weights


@pytest.mark.parametrize("size,world", [(10, 3), (7, 2), (5, 8), (64, 2)])
def test_eval_shards_count_every_sample_exactly_once(size, world):
    seen = []
    for r in range(world):
        seen += list(ShardedSampler(size, r, world, shuffle=False))
    assert sorted(seen) == list(range(size))


def test_train_shards_are_equal_padded_permutations_and_resume_skips():
    world, size = 3, 10
    shards = [list(ShardedSampler(size, r, world, shuffle=True, seed=5, epoch=2)) for r in range(world)]
    assert all(len(s) == 4 for s in shards)  # 10 padded to 12
    idx = [i for s in shards for i, _ in s]
    assert set(idx) == set(range(size))
    seeds = [seed for s in shards for _, seed in s]
    assert len(set(seeds)) == len(seeds)  # every sample gets its own augmentation seed
    again = list(ShardedSampler(size, 1, world, shuffle=True, seed=5, epoch=2))
    assert again == shards[1]
    assert list(ShardedSampler(size, 1, world, shuffle=True, seed=5, epoch=3)) != shards[1]
    assert list(ShardedSampler(size, 1, world, shuffle=True, seed=5, epoch=2, start=2)) == shards[1][2:]


def torchrun_train(cfg_path, stderr: list[str] | None = None) -> dict:
    """`convnext train --config CFG --json` in 2 gloo processes under torchrun; its summary (and its stderr appended
    to ``stderr``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "convnext", "train", "--config", str(cfg_path), "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(r.stdout[r.stdout.index("{"):])


def two_processes_and_one(tmp_path, ddp_only: dict | None = None, **settings) -> tuple[dict, dict]:
    """The summaries of one epoch trained by 2 gloo processes of batch 8 (with ``ddp_only`` settings too) and by one
    process of batch 16, both with ``settings``. 60 train samples: 2 ranks x 3 steps x 8 = 1 process x 3 steps x 16
    (the same samples per step); 15 val samples: shards of 8 and 7."""
    common = {**NO_AUG, "data.synthetic_samples": 60, "opt.epochs": 1, "opt.warmup_epochs": 0.0, **settings}
    ddp_cfg = tmp_path / "ddp.yaml"
    tiny_config(tmp_path / "ddp", **common, **{"data.batch_size": 8, **(ddp_only or {})}).save(ddp_cfg)
    ddp = torchrun_train(ddp_cfg)
    single = train(tiny_config(tmp_path / "single", **common, **{"data.batch_size": 16}))
    assert ddp["steps"] == single["steps"] == 3
    return ddp, single


def test_two_process_gloo_run_matches_single_process(tmp_path):
    ddp, single = two_processes_and_one(tmp_path)
    assert ddp["val_count"] == single["val_count"] == 15
    # same samples, same averaged gradients: equal up to float32 reduction order
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-4)
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-3)
    assert abs(ddp["final_val_top1"] - single["final_val_top1"]) <= 100 / 15 + 1e-9  # at most one sample
    wa = weights(run_dir(tmp_path / "ddp") / "last.safetensors")
    wb = weights(run_dir(tmp_path / "single") / "last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote the run directory's files, once
    lines = (run_dir(tmp_path / "ddp") / "metrics.jsonl").read_text().splitlines()
    assert sum('"type": "epoch"' in line for line in lines) == 1


def test_two_process_channels_last_run_gives_ddp_gradients_in_its_buckets_layout(tmp_path):
    # channels_last turns the 1x1 convs' weights into (out, in, 1, 1) tensors with channels-last strides, while
    # the engine's GEMM for them (train/accelerate.py) makes gradients with contiguous strides: DDP then warns on
    # every rank and copies each gradient into its bucket. The engine keeps those weights' strides contiguous.
    cfg = tmp_path / "ddp.yaml"
    tiny_config(tmp_path / "ddp", **NO_AUG, **{"data.synthetic_samples": 16, "data.batch_size": 4, "opt.epochs": 1,
                                               "opt.warmup_epochs": 0.0, "runtime.channels_last": True}).save(cfg)
    stderr: list[str] = []
    summary = torchrun_train(cfg, stderr)
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    assert "Grad strides do not match bucket view strides" not in stderr[0]


def test_two_process_run_with_stochastic_depth_that_skips_dropped_samples(tmp_path):
    # Blocks run their branch only on the samples they keep; with drop path 0.9 and 2 samples per rank
    # the last blocks often keep none on a rank. The branch still runs (on an empty batch), so every
    # parameter is in every rank's graph and DDP's gradient all-reduce completes.
    cfg = tmp_path / "ddp.yaml"
    tiny_config(tmp_path / "ddp", **NO_AUG, **{"data.synthetic_samples": 12, "data.batch_size": 2, "opt.epochs": 1,
                                               "opt.warmup_epochs": 0.0, "reg.drop_path": 0.9}).save(cfg)
    summary = torchrun_train(cfg)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert all(torch.isfinite(v).all() for v in weights(run_dir(tmp_path / "ddp") / "last.safetensors").values())


def test_two_process_run_fits_one_epoch_count_to_its_time_budget(tmp_path):
    # Each rank times its own steps; they agree on the slowest pace, so both train the same epochs (a rank that
    # stopped early would leave the other waiting in DDP's all-reduce until the timeout).
    cfg = tmp_path / "ddp.yaml"
    tiny_config(tmp_path / "ddp", **NO_AUG, **{"data.synthetic_samples": 32, "data.batch_size": 2, "opt.epochs": 1,
                                               "opt.warmup_epochs": 1.0, "opt.time_budget": 2.0}).save(cfg)
    summary = torchrun_train(cfg)
    lines = (run_dir(tmp_path / "ddp") / "metrics.jsonl").read_text().splitlines()
    fits = [json.loads(line) for line in lines if '"type": "budget"' in line]
    assert fits[0]["step"] == 8 and "refit" not in fits[0]  # 8 steps an epoch: the window is steps 2-8
    # the refits at epoch ends (until half the budget has gone by) also agree: the run trains the last count
    assert all(r["refit"] and r["step"] == 8 * (r["epoch"] + 1) for r in fits[1:])
    assert summary["epochs"] == fits[-1]["epochs"] and summary["steps"] == 8 * fits[-1]["epochs"]
    assert sum('"type": "epoch"' in line for line in lines) == fits[-1]["epochs"]


def test_more_processes_than_gpus_is_a_usage_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: rank 1 would ask for cuda:1, which does not exist."""
    from convnext.errors import UsageError
    from convnext.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=r"local rank 1 but the machine has 1 GPU.*--nproc_per_node 1 or fewer"):
        resolve_device("auto", local_rank=1)
    with pytest.raises(UsageError, match=r"cuda:3 does not exist: this machine has 1 GPU"):
        resolve_device("cuda:3")
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
