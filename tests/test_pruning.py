"""Loss-guided data pruning (data.prune_easy, train/pruning.py): the pruned passes and their weights, the scores,
the sampler's order, the trainer's bookkeeping (the images each step trains on, the weighted loss), bitwise resume
on one and on two processes, and the usage errors."""

import gc
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from convnext.train import budget, loop, train
from convnext.train.distributed import DistInfo, ShardedSampler
from convnext.train.loop import Trainer
from convnext.train.pruning import DataPruning
from convnext.train.step import train_step
from train_helpers import NO_AUG, assert_resumes_bitwise, run_cli, run_dir, tiny_config, weights

ONE = DistInfo()


def half_easy(size=2000, p=0.5):
    """Images 0..size/2-1 with loss 0.1 (below the mean: easy), the rest 1.0 (hard)."""
    pr = DataPruning(size, p, 0.875)
    pr.scores = torch.cat([torch.full((size // 2,), 0.1), torch.full((size // 2,), 1.0)]).double()
    return pr


# ---- the pruned passes, by hand ---------------------------------------------------------------------------

def test_a_pass_keeps_every_hard_image_and_leaves_easy_ones_out_at_the_rate_p():
    pr = half_easy(2000, p=0.5)
    order = torch.tensor(pr.order(1, 10, torch.Generator().manual_seed(0)))
    assert len(order) == 2000  # the epoch keeps its length
    # the first pass: all 1,000 hard images and ~500 easy ones (binomial: sd 16), shuffled; then ~500 of a second
    counts = torch.bincount(order, minlength=2000)
    assert (counts[1000:] >= 1).all()  # every hard image, in the first pass already
    assert counts[1000:].float().mean() > 1.2  # and again in the second
    kept_easy = (counts[:1000] > 0).float().mean()
    assert 0.55 < kept_easy < 0.85  # ~1 - 0.5^2 over 1.3 passes: pruned, but not gone
    # over many passes an easy image is kept 1 - p of the time and weighs 1 / (1 - p): 1 per pass, as a hard one
    seen = torch.zeros(2000)
    for seed in range(40):
        pr._plan = None
        order = torch.tensor(pr.order(1, 10, torch.Generator().manual_seed(seed)))
        w = pr.weights(1, 10, order)
        seen.index_add_(0, order, w)
    easy_per_image, hard_per_image = seen[:1000].mean(), seen[1000:].mean()
    assert pr.weights(1, 10, torch.tensor([0, 1999])).tolist() == [2.0, 1.0]
    assert easy_per_image / hard_per_image == pytest.approx(1.0, abs=0.03)


def test_plain_epochs_are_the_samplers_own_permutation():
    # the first epoch (no scores), the epochs from prune_until on, and runs without pruning draw the same order
    pr = half_easy(100)
    plain = ShardedSampler(100, 0, 1, seed=3, epoch=0)
    pruned = ShardedSampler(100, 0, 1, seed=3, epoch=0, order=lambda e, g: pr.order(e, 8, g))
    assert pruned.indices() == plain.indices()
    plain.epoch = pruned.epoch = 7  # 7 >= 0.875 * 8: annealed
    assert pruned.indices() == plain.indices()
    plain.epoch = pruned.epoch = 6
    assert pruned.indices() != plain.indices()
    assert pr.prunes(6, 8) and not pr.prunes(7, 8) and not pr.prunes(0, 8)


def test_ranks_take_the_global_order_round_robin():
    pr = half_easy(40)
    glob = pr.order(2, 10, torch.Generator().manual_seed(5 * 100_003 + 2))
    for rank in range(2):
        s = ShardedSampler(40, rank, 2, seed=5, epoch=2, order=lambda e, g: pr.order(e, 10, g))
        assert s.indices() == glob[rank::2]


def test_the_score_is_the_latest_loss_merged_at_the_epochs_end():
    pr = DataPruning(6, 0.5, 1.0)
    # image 2 twice in one batch (the seam of two passes): the later position's loss counts
    pr.record(torch.tensor([0, 2, 2]), torch.tensor([0.5, 0.9, 0.3]), torch.tensor([0, 1, 2]))
    pr.record(torch.tensor([1, 0]), torch.tensor([0.7, 0.25]), torch.tensor([3, 4]))
    pr.end_epoch(ONE)
    assert pr.scores[:3].tolist() == pytest.approx([0.25, 0.7, 0.3])
    assert pr.scores[3:].isnan().all()  # never trained on
    # an image not trained on keeps its score
    pr.record(torch.tensor([1]), torch.tensor([0.1]), torch.tensor([0]))
    pr.end_epoch(ONE)
    assert pr.scores[:3].tolist() == pytest.approx([0.25, 0.1, 0.3])
    # easy: below the mean of the known scores (0.217), so image 1 only; never-seen images are not easy
    pr.order(1, 4, torch.Generator().manual_seed(0))
    assert pr.weights(1, 4, torch.arange(6)).tolist() == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]


# ---- a run ----------------------------------------------------------------------------------------------

def prune_config(out, **over):
    return tiny_config(out, **{**NO_AUG, "data.prune_easy": 0.5, "data.prune_until": 1.0, "opt.epochs": 4,
                               "data.synthetic_samples": 64, **over})


def test_each_step_trains_the_images_the_sampler_names_and_records_their_losses(tmp_path, monkeypatch):
    steps = []

    def checked(tr, batches, samples=None):
        for (images, labels), (indices, positions, w) in zip(batches, samples):
            # synthetic labels are index % classes: the feed's batch is the images the positions name
            assert torch.equal(labels, indices % 4)
            steps.append((tr.epoch, indices.clone(), None if w is None else w.clone()))
        return train_step(tr, batches, samples)

    monkeypatch.setattr(loop, "train_step", checked)
    summary = train(prune_config(tmp_path))
    assert summary["epochs"] == 4 and len(steps) == 4 * 8
    by_epoch = {e: torch.cat([i for ep, i, _ in steps if ep == e]) for e in range(4)}
    assert sorted(by_epoch[0].tolist()) == list(range(64))  # a plain first epoch: every image once, weight None
    assert all(w is None for e, _, w in steps if e == 0)
    for e in (1, 2, 3):  # pruned: easy images weigh 2, fewer distinct images, the hard ones more than once
        ws = torch.cat([w for ep, _, w in steps if ep == e])
        assert set(ws.tolist()) == {1.0, 2.0}
        assert len(by_epoch[e].unique()) < 64
    records = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert "prune_easy_share" not in epochs[0] and all(0 < r["prune_easy_share"] < 1 for r in epochs[1:])
    assert all(r["prune_distinct_share"] < 1 for r in epochs[1:])


def test_a_step_descends_the_weighted_mean_of_the_per_image_losses(tmp_path):
    # plain SGD without momentum or decay: one step moves each weight by -lr * d(mean of w_i * loss_i)/dw
    cfg = prune_config(tmp_path, **{"opt.optimizer": "sgd", "opt.momentum": 0.0, "opt.weight_decay": 0.0,
                                    "opt.warmup_epochs": 0.0, "aug.label_smoothing": 0.1})
    tr = Trainer(cfg, DistInfo())
    images, labels = next(iter(tr.train_loader))
    indices, positions = torch.arange(8), torch.arange(8)
    w = torch.tensor([2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    ref = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.model.zero_grad()
    each = F.cross_entropy(tr.model(images), labels, label_smoothing=0.1, reduction="none")
    (each * w).mean().backward()
    expected = {k: ref[k] - tr.scheduler.get_last_lr()[0] * p.grad for k, p in tr.model.named_parameters()}
    tr.model.zero_grad()
    loss, _, bad = train_step(tr, [(images, labels)], [(indices, positions, w)])
    assert not bad
    assert loss.item() == pytest.approx(each.mean().item(), rel=1e-6)  # the logged loss is unweighted
    for k, p in tr.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-5, atol=1e-7)
    assert tr.pruning.latest[:8].tolist() == pytest.approx(each.detach().double().tolist(), rel=1e-6)


def test_a_budget_run_prunes_the_epochs_it_fits(tmp_path, monkeypatch):
    # opt.time_budget changes the run's length inside the first epoch, whose order is already drawn: the epoch goes
    # on with it, and the pruned epochs are those of the fitted length (1 <= e < 0.5 * epochs)
    ticks = itertools.count()  # 1 s per clock reading
    monkeypatch.setattr(budget, "clock", lambda: float(next(ticks)))
    # 64 steps an epoch: the budget is fitted at step 45 (the window is steps 5-45), mid-epoch
    summary = train(prune_config(tmp_path, **{"opt.time_budget": 10.0, "opt.epochs": 2, "opt.warmup_epochs": 1.0,
                                              "data.prune_until": 0.5, "data.synthetic_samples": 128,
                                              "data.batch_size": 2}))
    records = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    fitted = [r["epochs"] for r in records if r["type"] == "budget"]
    assert [r["step"] for r in records if r["type"] == "budget"] == [45]
    assert len(fitted) == 1 and fitted[0] >= 4 and summary["epochs"] == fitted[0]
    pruned = [r["epoch"] for r in records if r["type"] == "epoch" and "prune_easy_share" in r]
    assert pruned == [e for e in range(1, fitted[0]) if e < 0.5 * fitted[0]]


def test_a_resumed_run_trains_the_same_pruned_batches_bitwise(tmp_path):
    # stopped in the third epoch (pruned), with some of its losses recorded only in the checkpoint
    assert_resumes_bitwise(prune_config, tmp_path, 19)


def torchrun(cfg_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "convnext", "train", "--config", str(cfg_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_processes_merge_their_losses_and_resume_bitwise(tmp_path):
    # each rank records the losses of its own images; the scores both prune by are the merge, and a run stopped
    # mid-epoch keeps rank 1's losses of that epoch in the checkpoint too
    over = {"data.batch_size": 4}
    for name, extra in (("whole", {}), ("parts", {"runtime.max_steps": 21, "runtime.save_every_steps": 1}),
                        ("parts", {"runtime.resume": "auto"})):
        path = tmp_path / f"{name}.yaml"
        prune_config(tmp_path / name, **over, **extra).save(path)
        torchrun(path)
    a = weights(run_dir(tmp_path / "whole") / "last.safetensors")
    b = weights(run_dir(tmp_path / "parts") / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (run_dir(tmp_path / "whole") / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["prune_easy_share"] < 1 for r in records if r["type"] == "epoch" and r["epoch"] > 0)


@pytest.mark.parametrize("flag,value,says", [("data.prune_easy", "1.0", "must be in [0, 1)"),
                                             ("data.prune_easy", "-0.1", "must be in [0, 1)"),
                                             ("data.prune_until", "0", "must be in (0, 1]")])
def test_bad_pruning_values_are_one_line_usage_errors(flag, value, says, tmp_path, capsys):
    rc, _, err = run_cli(["train", "--data.dataset", "synthetic", "--runtime.out", tmp_path, f"--{flag}", value],
                         capsys)
    assert rc == 2
    err = err.strip()
    assert len(err.splitlines()) == 1 and says in err and flag in err
    assert not any(tmp_path.iterdir())


def test_the_trainer_is_freed_before_the_process_group_goes(tmp_path, monkeypatch):
    # data pruning's order callback puts the Trainer in a reference cycle; freed only by the garbage collector, it
    # (with DDP under torchrun) outlived destroy_process_group and was torn down at interpreter exit, where gloo
    # aborted a finished two-process run once (SIGABRT, "terminate called without an active exception")
    alive = []
    monkeypatch.setattr(loop.dist_mod, "cleanup", lambda: alive.append(
        sum(type(o) is loop.Trainer for o in gc.get_objects())))
    gc.collect()
    gc.disable()  # only train()'s own collection may free the cycle
    try:
        train(prune_config(tmp_path / "run", **{"opt.epochs": 1}))
    finally:
        gc.enable()
    assert alive == [0]
