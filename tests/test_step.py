"""The optimizer step that keeps its NaN/Inf guard and statistics on the device (train/step.py)."""

import math

import pytest
import torch

from convnext.models import create_model
from convnext.train import train
from convnext.train.ema import make_ema
from convnext.train.logging import read_metrics
from convnext.train.loop import Trainer
from convnext.train.optim import build_optimizer
from convnext.train.state import load_train_state
from convnext.train.step import StepTally, _apply_update
from train_helpers import comparable, poison_forward, run_dir, tiny_config, weights


def test_tally_counts_losses_skips_and_runs_of_skips():
    t = StepTally(torch.device("cpu"), consecutive_bad=1)
    pattern = [(0.5, False), (float("nan"), True), (float("inf"), True), (0.25, False), (2.0, True)]
    for loss, bad in pattern:
        t.add(torch.tensor(loss), torch.tensor(bad))
    r = t.read()
    assert r["steps"] == 5 and r["good"] == 2 and r["bad"] == 3
    assert r["loss_sum"] == 0.75  # skipped steps' losses are not counted
    assert r["last_loss"] == 2.0
    assert r["run"] == 1 and r["worst_run"] == 2  # the carried-in run was broken by the first good step
    # a new window starts from the current run
    t.add(torch.tensor(float("nan")), torch.tensor(True))
    r = t.read()
    assert r["steps"] == 1 and r["run"] == 2 and r["worst_run"] == 2 and r["loss_sum"] == 0
    assert math.isnan(r["last_loss"])
    assert t.read()["steps"] == 0


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_a_bad_step_leaves_weights_and_optimizer_state_untouched(opt):
    model = create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=3)
    optimizer = build_optimizer(model, 1e-2, 0.05, name=opt)
    assert getattr(optimizer, "_step_supports_amp_scaling", False) == (opt == "adamw")  # fused: skipped on device

    def step(grad_value, bad):
        for p in model.parameters():
            p.grad = torch.full_like(p, grad_value)
        _apply_update(optimizer, None, torch.tensor(bad))
        optimizer.zero_grad()

    step(1.0, False)
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    step(float("nan"), True)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    after = {k: v for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert getattr(optimizer, "found_inf", None) is None  # nothing left behind for the next step
    step(1.0, False)
    assert not torch.equal(before[0], next(model.parameters()))


def test_ema_update_is_skipped_by_its_flag():
    m = torch.nn.Linear(3, 2)
    ema = make_ema(m, decay=0.5)
    ema.update_parameters(m, ok=torch.tensor(True))  # the first update copies
    first = ema.module.weight.clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update_parameters(m, ok=torch.tensor(False))
    assert torch.equal(ema.module.weight, first) and int(ema.n_averaged) == 1
    ema.update_parameters(m, ok=torch.tensor(True))
    torch.testing.assert_close(ema.module.weight, 0.5 * first + 0.5 * m.weight, rtol=0, atol=1e-6)
    assert int(ema.n_averaged) == 2


def test_reading_the_tally_every_few_steps_gives_the_same_run(tmp_path, monkeypatch, capsys):
    """On a GPU the engine reads the step results every log_every steps, on the CPU after every step: the same
    weights, EMA, losses and skip counts either way."""
    over = {"opt.epochs": 1, "reg.ema": True, "reg.drop_path": 0.1, "runtime.log_every": 3}
    results = {}
    for read_every in (1, 3):
        poison_forward(monkeypatch, {4, 5}, "nan")
        init = Trainer.__init__

        def patched(self, *a, _n=read_every, **k):
            init(self, *a, **k)
            self.read_every = _n

        monkeypatch.setattr(Trainer, "__init__", patched)
        out = tmp_path / f"every{read_every}"
        s = train(tiny_config(out, **over))
        monkeypatch.undo()
        results[read_every] = (s, weights(run_dir(out) / "last.safetensors"), load_train_state(run_dir(out)),
                               read_metrics(run_dir(out) / "metrics.jsonl"), capsys.readouterr().err)
    (s1, w1, st1, m1, err1), (s3, w3, st3, m3, err3) = results[1], results[3]
    assert s1["skipped_steps"] == s3["skipped_steps"] == 2
    assert all(torch.equal(w1[k], w3[k]) for k in w1)
    assert all(torch.equal(st1["ema"][k], st3["ema"][k]) for k in st1["ema"])
    assert int(st1["ema"]["n_averaged"]) == 8 - 2  # 8 steps, 2 skipped
    epochs = lambda m: [r for r in comparable(m) if r["type"] == "epoch"]  # noqa: E731
    assert epochs(m1) == epochs(m3)
    assert st1["epoch_loss_sum"] == st3["epoch_loss_sum"] and st1["bad_steps_total"] == st3["bad_steps_total"] == 2
    # per-step reads name each skipped step; deferred reads name the window they fell in
    assert "warning: step 4: loss/gradient is NaN or Inf; step skipped (1 in a row)" in err1
    assert "warning: step 5: loss/gradient is NaN or Inf; step skipped (2 in a row)" in err1
    assert "warning: steps 4-6: loss/gradient is NaN or Inf; 2 step(s) skipped (0 in a row)" in err3


def test_deferred_reads_still_stop_a_diverged_run(tmp_path, monkeypatch):
    from convnext.train import TrainingDiverged

    poison_forward(monkeypatch, {3, 4, 5}, "nan")
    init = Trainer.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.read_every = 4

    monkeypatch.setattr(Trainer, "__init__", patched)
    with pytest.raises(TrainingDiverged, match="training diverged: 3 consecutive steps .* at steps 5-8"):
        train(tiny_config(tmp_path, **{"runtime.max_bad_steps": 3, "runtime.log_every": 100}))
