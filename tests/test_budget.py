"""opt.time_budget: the epoch count fitted to a wall-clock budget (train/budget.py) and the run it gives."""

import itertools
import json

import pytest
import torch
import yaml

from convnext.train import budget, train
from train_helpers import SimulatedMachine, run_cli, run_dir, tiny_config, weights


# ---- the arithmetic, by hand ----------------------------------------------------------------------

def test_fit_counts_training_and_validation():
    # 100 steps of 0.1 s = 10 s an epoch; 30 validation batches at a third of a step = 1 s. 2 s have gone by,
    # 10 steps (1 s) of them training: 99 s are left for the run's steps, 11 s per epoch -> 9 epochs,
    # 2 + (900 - 10) * 0.1 + 9 * 1 = 100 s
    fit = budget.fit_epochs(100, elapsed=2, step_s=0.1, steps_done=10, steps_per_epoch=100, val_steps=30,
                            val_every=1, val_passes=1)
    assert fit.epochs == 9 and fit.predicted_s == pytest.approx(100)
    # without validation the same budget holds floor(99 / 10) = 9 epochs, in 91 s; 120 s hold 11 (111 s)
    assert budget.fit_epochs(100, 2, 0.1, 10, 100, 30, 0, 1).predicted_s == pytest.approx(91)
    assert budget.fit_epochs(120, 2, 0.1, 10, 100, 30, 0, 1).epochs == 11
    # validating the EMA too doubles the validation: 12 s per epoch -> 8 epochs (2 + 79 + 16 = 97 s)
    fit = budget.fit_epochs(100, 2, 0.1, 10, 100, 30, 1, 2)
    assert fit.epochs == 8 and fit.predicted_s == pytest.approx(97)


def test_fit_counts_the_last_epochs_validation():
    # 10 s epochs, a 6 s validation every 3rd epoch and after the last. 4 epochs average 12 s each (48 s) but
    # validate twice (epochs 3 and 4): 52 s > 50, so 3 epochs (36 s)
    fit = budget.fit_epochs(50, 0, 0.1, 0, 100, 180, 3, 1)
    assert fit.epochs == 3 and fit.predicted_s == pytest.approx(36)
    assert budget.fit_epochs(52, 0, 0.1, 0, 100, 180, 3, 1).epochs == 4


def test_a_budget_below_one_epoch_trains_one_and_says_so():
    fit = budget.fit_epochs(5, 0, 0.1, 0, 100, 0, 1, 1)
    assert fit.epochs == 1 and fit.predicted_s == pytest.approx(10)
    assert "one epoch does not fit the budget" in fit.message(5)
    assert "--opt.epochs 1 repeats this run" in fit.message(5)
    assert "--opt.epochs 1 trains as long" in fit.message(5, in_warmup=False)


def test_window_skips_the_first_steps_and_stays_in_the_first_epoch():
    assert budget.Window.for_epoch(390) == budget.Window(5, 45)
    assert budget.Window.for_epoch(8) == budget.Window(2, 8)
    assert budget.Window.for_epoch(1) == budget.Window(0, 1)


# ---- a run ----------------------------------------------------------------------------------------

@pytest.fixture
def ticking_clock(monkeypatch):
    """budget.clock advancing 1 s per reading: the run start (0), the window's start (1) and its end (2: 1 s over
    the window's 6 steps, 2 s elapsed)."""
    ticks = itertools.count()
    monkeypatch.setattr(budget, "clock", lambda: float(next(ticks)))


def budget_config(out, **over):
    # 64 samples / batch 8 = 8 steps an epoch; the window is steps 2-8, inside the 8-step warmup (1 epoch)
    return tiny_config(out, **{"opt.time_budget": 6.2, "opt.warmup_epochs": 1.0, "opt.epochs": 2, **over})


def test_a_budget_run_is_the_run_with_the_epochs_it_chose(tmp_path, ticking_clock, capsys):
    # 1/6 s per step (1.33 s an epoch), 2 validation batches (0.11 s): 6.2 - 2 + 8/6 = 5.53 s left for the
    # run's steps -> 3 epochs, predicted 2 + 16/6 + 3 * 0.11 = 5.0 s (4 epochs: 6.44 s)
    summary = train(budget_config(tmp_path / "a"))
    assert summary["epochs"] == 3 and summary["steps"] == 24
    assert "3 epoch(s)" in capsys.readouterr().err
    run = run_dir(tmp_path / "a")
    assert yaml.safe_load((run / "config.yaml").read_text())["opt"]["epochs"] == 3
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"budget"' in line][0]
    assert record["epochs"] == 3 and record["step"] == 8 and record["step_s"] == pytest.approx(1 / 6)
    assert record["predicted_s"] == pytest.approx(5.0)

    plain = train(tiny_config(tmp_path / "b", **{"opt.warmup_epochs": 1.0, "opt.epochs": 3}))
    assert plain["epochs"] == 3
    a, b = weights(run / "last.safetensors"), weights(run_dir(tmp_path / "b") / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_budget_run_keeps_its_epochs(tmp_path, ticking_clock):
    whole = train(budget_config(tmp_path / "whole"))
    # stopped in its second epoch, after the fit; resumed with the same command on a clock that would fit
    # different epochs if it were asked again
    train(budget_config(tmp_path / "parts", **{"runtime.max_steps": 11}))
    resumed = train(budget_config(tmp_path / "parts", **{"runtime.resume": "auto"}))
    assert whole["epochs"] == resumed["epochs"] == 3 and resumed["steps"] == 24
    a = weights(run_dir(tmp_path / "whole") / "last.safetensors")
    b = weights(run_dir(tmp_path / "parts") / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_inside_the_window_times_it_again_on_resume(tmp_path, ticking_clock):
    train(budget_config(tmp_path, **{"runtime.max_steps": 4, "runtime.save_every_steps": 1}))
    assert yaml.safe_load((run_dir(tmp_path) / "config.yaml").read_text())["opt"]["epochs"] == 2  # not fitted yet
    resumed = train(budget_config(tmp_path, **{"runtime.resume": "auto"}))
    # the window is steps 4-8 on resume; its end (at 1 s per reading) fits again, and the run trains what it fits
    record = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()
              if '"budget"' in line]
    assert len(record) == 1 and record[0]["step"] == 8 and resumed["epochs"] == record[0]["epochs"]


def test_changing_the_budget_on_resume_is_refused(tmp_path, ticking_clock, capsys):
    train(budget_config(tmp_path, **{"runtime.max_steps": 11}))
    with pytest.raises(Exception, match=r"opt.time_budget 6.2 -> 60"):
        train(budget_config(tmp_path, **{"runtime.resume": "auto", "opt.time_budget": 60.0}))


@pytest.mark.parametrize("value", ["-5", "nan", "inf"])
def test_a_bad_budget_is_a_usage_error(value, tmp_path, capsys):
    rc, _, err = run_cli(["train", "--preset", "small", "--data.dataset", "synthetic", "--opt.time_budget", value,
                          "--runtime.out", tmp_path], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "opt.time_budget" in lines[0], err
    if value == "-5":
        assert "e.g. 1800 for 30 minutes" in lines[0]


def test_a_window_past_the_warmup_says_the_run_is_not_repeated_exactly(tmp_path, ticking_clock, capsys):
    # a 4-step warmup: steps 4-7 of the window used the lr of opt.epochs' (2 epochs') cosine, so --opt.epochs 3
    # would give them other lrs
    summary = train(budget_config(tmp_path, **{"opt.warmup_epochs": 0.5}))
    err = capsys.readouterr().err
    assert summary["epochs"] == 3 and "--opt.epochs 3 trains as long" in err and "repeats" not in err


# ---- refits at epoch ends --------------------------------------------------------------------------

def test_a_refit_counts_the_epochs_left_and_the_measured_validation():
    # 3 epochs done at 30 s of 100; 100 steps of 0.1 s (10 s) an epoch and a measured 2 s validation after each:
    # 70 s hold 5 more (60 s), so 8 epochs, predicted 30 + 50 + 10 = 90 s (9: 102 s)
    fit = budget.fit_epochs(100, 30, 0.1, 0, 100, 30, 1, 1, epochs_done=3, val_s=2.0)
    assert fit.epochs == 8 and fit.predicted_s == pytest.approx(90)
    # validating every 3rd epoch and the last: of epochs 3-7, 5 and 7 validate; of 3-8, 5 and 8. So 9 epochs fit
    # (30 + 60 + 4 = 94 s; 10: 5, 8 and 9 validate, 106 s)
    assert budget.validations_between(3, 8, 3) == 2 and budget.validations_between(3, 10, 3) == 3
    fit = budget.fit_epochs(100, 30, 0.1, 0, 100, 30, 3, 1, epochs_done=3, val_s=2.0)
    assert fit.epochs == 9 and fit.predicted_s == pytest.approx(94)
    # the count in force grows only with 1 % of the budget spare: one epoch done at 10 s of 100, 10 s epochs, no
    # validation. 10 epochs fit exactly (100 s), so 9 stays 9, 8 grows to 9 (90 s), and 11 (110 s) shrinks to 10
    fits = {keep: budget.fit_epochs(100, 10, 0.1, 0, 100, 0, 0, 1, epochs_done=1, keep=keep) for keep in (8, 9, 11)}
    assert {keep: f.epochs for keep, f in fits.items()} == {8: 9, 9: 9, 11: 10}
    assert budget.fit_epochs(100, 10, 0.1, 0, 100, 0, 0, 1, epochs_done=1).epochs == 10
    # a spent budget still trains one more epoch, so the cosine ends where it should
    assert budget.fit_epochs(100, 120, 0.1, 0, 100, 30, 1, 1, epochs_done=3, val_s=2.0).epochs == 4


def test_the_pace_is_the_median_of_its_stretches_and_refits_until_half_the_budget():
    pace = budget.Pace(1800)
    assert not pace.refits_at(0)  # nothing timed yet
    pace.add(0.1)
    pace.add(0.5)  # a minute of another job beside the run
    pace.add(0.1)
    assert pace.step_s() == pytest.approx(0.1)
    assert pace.refits_at(899) and not pace.refits_at(900)


def refit_config(out, **over):
    # 100 samples / batch 2 = 50 steps an epoch (the window is steps 5-45) and 25 validation samples in 13 batches;
    # a one-epoch warmup; a 40 s budget
    return tiny_config(out, **{"data.synthetic_samples": 100, "data.batch_size": 2, "opt.warmup_epochs": 1.0,
                               "opt.epochs": 2, "opt.time_budget": 40.0, **over})


def budget_records(out):
    lines = (run_dir(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"type": "budget"' in line]


def test_a_slow_window_is_corrected_by_the_refits(tmp_path, monkeypatch, capsys):
    # The window (steps 5-45) runs at 0.3 s a step beside another job, the rest at 0.1 s; no validation.
    # The window's fit: 13.5 s gone, then the first epoch's last 5 steps and 15 s for each further epoch at 0.3 s a
    # step -> 2 epochs (30 s predicted; 3: 45 s). Alone it would stop at 19 s, half the budget unused.
    machine = SimulatedMachine(monkeypatch, lambda i, size: 0.3 if i < 45 else 0.1)
    summary = train(refit_config(tmp_path, **{"runtime.val_every": 0}))
    first, *refits = budget_records(tmp_path)
    assert first["epochs"] == 2 and first["step_s"] == pytest.approx(0.3)
    # after epoch 0 (14 s): median of 0.3 and 0.1 = 0.2 s a step, 10 s an epoch -> 3 epochs (34 s; 4: 44 s).
    # after epoch 1 (19 s): median of 0.3, 0.1, 0.1 = 0.1 s, 5 s an epoch -> 6 epochs (39 s; 7: 44 s).
    # after epoch 2 (24 s), past half the budget: no more refits.
    assert [(r["epoch"], r["epochs"], r["was"]) for r in refits] == [(0, 3, 2), (1, 6, 3)]
    assert [r["step_s"] for r in refits] == pytest.approx([0.2, 0.1])
    assert refits[-1]["predicted_s"] == pytest.approx(39)
    assert summary["epochs"] == 6 and summary["steps"] == 300 and machine.now == pytest.approx(39)
    assert yaml.safe_load((run_dir(tmp_path) / "config.yaml").read_text())["opt"]["epochs"] == 6
    err = capsys.readouterr().err
    # the first refit ends with the warmup (step 50), the second comes after it
    assert "refitted after epoch 0" in err and "-> 3 epoch(s) (was 2)" in err and "--opt.epochs 3 repeats" in err
    assert "-> 6 epoch(s) (was 3)" in err and "--opt.epochs 6 trains as long" in err


def test_a_refit_takes_the_measured_validation_in_place_of_the_guess(tmp_path, monkeypatch):
    # 0.1 s a step throughout; a validation takes 1 s, against the window's guess of 13 batches at a third of a
    # step (0.43 s): the window fits 7 epochs (38.0 s predicted), which would take 42 s.
    machine = SimulatedMachine(monkeypatch, lambda i, size: 0.1, val_s=1.0)
    summary = train(refit_config(tmp_path))
    first, *refits = budget_records(tmp_path)
    assert first["epochs"] == 7 and first["predicted_s"] == pytest.approx(4.5 + 30.5 + 7 * 1.3 / 3)
    # after epoch 0 (6 s): 6 s an epoch with its validation -> 6 epochs (36 s), kept after epochs 1 and 2
    assert [(r["epoch"], r["epochs"]) for r in refits] == [(0, 6), (1, 6), (2, 6)]
    assert all(r["val_s"] == pytest.approx(1.0) for r in refits)
    assert summary["epochs"] == 6 and machine.now == pytest.approx(36)
