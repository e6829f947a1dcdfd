"""Progressive resizing (data.min_image_size, data.resize_ramp; data/progressive.py): each epoch's size, the
resized batches the model trains on, opt.time_budget's arithmetic under it, resume and the usage errors."""

import itertools
import json

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from convnext.data.progressive import ResizeSchedule, crop_batch, resize_batch, shrink_batch
from convnext.models import ConvNeXt
from convnext.train import budget, train
from train_helpers import SimulatedMachine, assert_resumes_bitwise, run_cli, run_dir, tiny_config, weights

EVEN = lambda size: size % 2 == 0  # noqa: E731  (a stride-2 patchify stem's rule)


# ---- the schedule, by hand ------------------------------------------------------------------------------

def test_sizes_hold_low_then_grow_linearly_then_hold_full():
    r = ResizeSchedule(20, 28, (0.4, 0.85), valid=EVEN)
    # 22 epochs: epoch e starts at e/22 of the run. Before 0.4 (e <= 8): 20. e=12 starts at 0.545:
    # 20 + 8 * 0.145 / 0.45 = 22.6 -> 22. e=16 (0.727): 25.2 -> 24 (25 is odd). From 0.85 (e >= 19): 28.
    sizes = r.sizes(22)
    assert sizes[:9] == [20] * 9 and sizes[19:] == [28, 28, 28]
    assert sizes[12] == 22 and sizes[16] == 24
    assert sizes == sorted(sizes) and all(s % 2 == 0 for s in sizes)


def test_a_ramp_of_no_length_is_a_step_and_a_ramp_at_zero_is_off():
    step = ResizeSchedule(16, 32, (0.5, 0.5))
    assert step.sizes(4) == [16, 16, 32, 32]
    assert ResizeSchedule(16, 32, (0.0, 0.0)).sizes(3) == [32, 32, 32]
    # a ramp over the whole run starts at the low size and never reaches the full one at an epoch's start
    assert ResizeSchedule(16, 32, (0.0, 1.0)).sizes(4) == [16, 20, 24, 28]


def test_cost_is_pixels_relative_to_the_first_epoch():
    step = ResizeSchedule(16, 32, (0.5, 0.5))
    assert [step.cost(e, 4) for e in range(4)] == [1.0, 1.0, 4.0, 4.0]
    assert step.validation_cost(4) == 4.0


def test_resize_batch_is_torchvisions_antialiased_bilinear_resize():
    x = torch.randn(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    ref = TF.resize(x, [20, 20], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    assert torch.allclose(resize_batch(x, 20), ref, atol=1e-6)
    assert resize_batch(x, 28) is x


# ---- opt.time_budget under progressive resizing, by hand -------------------------------------------------

def test_the_budget_scales_each_epoch_by_its_pixels():
    # 10 steps of 1 s an epoch at the first epoch's size, nothing elapsed, no validation. Half the run at the low
    # size (cost 1), half at twice the side (cost 4): N even -> 10 * 2.5 N s. 500 s hold 20 epochs exactly; 21
    # would train 11 small and 10 large ones (510 s).
    step = ResizeSchedule(16, 32, (0.5, 0.5))
    fit = budget.fit_epochs(500, 0, 1.0, 0, 10, 0, 0, 1, step)
    assert fit.epochs == 20 and fit.predicted_s == pytest.approx(500)
    assert budget.fit_epochs(509, 0, 1.0, 0, 10, 0, 0, 1, step).epochs == 20
    assert budget.fit_epochs(510, 0, 1.0, 0, 10, 0, 0, 1, step).epochs == 21
    # validation runs at the full size: 3 batches at a third of a step, x4 -> 4 s after every epoch
    fit = budget.fit_epochs(100, 0, 1.0, 0, 10, 3, 1, 1, step)  # N=3: 1+1+4 = 6 epochs' cost -> 60 + 12 = 72;
    assert fit.epochs == 3 and fit.predicted_s == pytest.approx(72)  # N=4: 100 + 16 = 116


# ---- a run ----------------------------------------------------------------------------------------------

def prog_config(out, **over):
    # convnext_atto's tiny config has a total stride of 32 and a 4 px patch: 64 px, and 32 px for the first half
    return tiny_config(out, **{"data.image_size": 64, "data.min_image_size": 32, "data.resize_ramp": [0.5, 0.5],
                               "opt.epochs": 4, **over})


@pytest.mark.parametrize("over", [{}, {"data.on_device": True, "aug.randaugment": False, "data.shrink": "crop"}],
                         ids=["loader-resize", "on-device-crop"])
def test_the_model_trains_on_each_epochs_size_and_validates_at_the_full_size(over, tmp_path, monkeypatch):
    seen = []
    forward = ConvNeXt.forward

    def spy(self, x):
        seen.append((self.training, x.shape[-1]))
        return forward(self, x)

    monkeypatch.setattr(ConvNeXt, "forward", spy)
    train(prog_config(tmp_path, **over))
    trained = [size for training, size in seen if training]
    # 64 samples / batch 8 = 8 steps an epoch: epochs 0-1 at 32 px, 2-3 at 64 px
    assert trained == [32] * 16 + [64] * 16
    assert {size for training, size in seen if not training} == {64}
    records = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_size"] for r in records if r["type"] == "epoch"] == [32, 32, 64, 64]


def test_a_resumed_run_trains_each_epoch_at_its_size_bitwise(tmp_path):
    assert_resumes_bitwise(prog_config, tmp_path, 13)


def test_a_budget_run_fits_fewer_epochs_for_the_larger_ones_and_repeats_exactly(tmp_path, monkeypatch, capsys):
    ticks = itertools.count()  # 1 s per reading: the window (steps 2-8) takes 1 s, 2 s have gone by at its end
    monkeypatch.setattr(budget, "clock", lambda: float(next(ticks)))
    over = {"opt.time_budget": 9.0, "opt.warmup_epochs": 1.0, "opt.epochs": 2}
    # 1/6 s a step, 2 validation batches at a third of a step (x4 at 64 px: 0.44 s). 2 epochs: epoch 1 is at 64
    # px (x4): 2 + (8 + 32 - 8) / 6 + 2 * 0.44 = 8.2 s; 3 epochs (32, 32, 64 px): 10.0 s. Without progressive
    # resizing the same clock fits 5 epochs (7.9 s).
    summary = train(prog_config(tmp_path / "a", **over))
    assert summary["epochs"] == 2 and "2 epoch(s), ~8 s predicted" in capsys.readouterr().err
    record = [json.loads(line) for line in (run_dir(tmp_path / "a") / "metrics.jsonl").read_text().splitlines()
              if '"budget"' in line][0]
    assert record["train_sizes"] == [32, 64] and record["predicted_s"] == pytest.approx(2 + 32 / 6 + 8 / 9)
    ticks = itertools.count()
    assert train(tiny_config(tmp_path / "c", **{**over, "data.image_size": 64}))["epochs"] == 5

    plain = train(prog_config(tmp_path / "b", **{"opt.warmup_epochs": 1.0, "opt.epochs": 2}))
    assert plain["epochs"] == 2
    a, b = weights(run_dir(tmp_path / "a") / "last.safetensors"), weights(run_dir(tmp_path / "b") / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refits_count_each_epochs_pace_at_the_first_epochs_size(tmp_path, monkeypatch):
    # A step costs 0.1 s at 32 px and 0.4 s at 64 px, as its pixels; no validation. 50 steps an epoch (100 samples,
    # batch 2), the first half of the epochs at 32 px. The window's fit: N epochs cost 2.5 N epochs of 32 px
    # steps, 12.5 N s: 6 epochs (75 s; 7: 80 s) in 78 s.
    machine = SimulatedMachine(monkeypatch, lambda i, size: 0.1 * (size / 32) ** 2)
    summary = train(prog_config(tmp_path, **{"data.synthetic_samples": 100, "data.batch_size": 2,
                                             "opt.warmup_epochs": 1.0, "opt.time_budget": 78.0,
                                             "runtime.val_every": 0}))
    lines = (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()
    first, *refits = [json.loads(line) for line in lines if '"type": "budget"' in line]
    assert first["epochs"] == 6 and first["predicted_s"] == pytest.approx(75)
    # refits after epochs 0-3 (35 s gone after epoch 3, at 64 px; epoch 4 ends at 55 s, past half the budget):
    # every epoch's pace, 64 px ones included, is 0.1 s a 32 px step, so the count stays
    assert [r["epoch"] for r in refits] == [0, 1, 2, 3]
    assert [r["epoch_step_s"] for r in refits] == pytest.approx([0.1] * 4)
    assert all(r["epochs"] == 6 for r in refits)
    assert summary["epochs"] == 6 and machine.now == pytest.approx(75)


# ---- usage errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--data.min_image_size", "21"], ["data.min_image_size=21", "patch size 2", "use 20 or 22"]),
    (["--data.min_image_size", "6"], ["data.min_image_size=6", "smallest valid size is 8"]),
    (["--data.min_image_size", "28"], ["must be below data.image_size=28"]),
    (["--data.min_image_size", "20", "--data.resize_ramp", "[0.9,0.5]"], ["data.resize_ramp=[0.9, 0.5]"]),
    (["--data.min_image_size", "20", "--data.shrink", "pool"], ["data.shrink='pool'", "resize, crop"]),
])
def test_a_bad_progressive_setting_is_one_line_exit_2(flags, words, tmp_path, capsys):
    # Fashion-MNIST: the small preset's unset size is its 28 px (refused before any data is read)
    rc, _, err = run_cli(["train", "--preset", "small", "--data.dataset", "fashion_mnist", *flags, "--runtime.out",
                          tmp_path], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    assert not any(tmp_path.iterdir())


def test_crop_batch_cuts_one_window_per_image_at_full_scale():
    torch.manual_seed(0)
    x = torch.arange(4 * 2 * 6 * 6, dtype=torch.float32).view(4, 2, 6, 6)
    out = crop_batch(x, 4)
    assert out.shape == (4, 2, 4, 4)
    places = set()
    for n in range(4):  # every crop is a contiguous window of its own image, in both channels alike
        top, left = divmod(int(out[n, 0, 0, 0] - x[n, 0, 0, 0]), 6)
        places.add((top, left))
        assert torch.equal(out[n], x[n, :, top:top + 4, left:left + 4])
    assert len(places) > 1  # drawn per image
    assert crop_batch(x, 6) is x
    assert shrink_batch(x, 3, "crop").shape == (4, 2, 3, 3)
    assert torch.equal(shrink_batch(x, 3, "resize"), resize_batch(x, 3))


def test_crop_mode_trains_on_windows_and_resumes_bitwise(tmp_path):
    assert_resumes_bitwise(lambda out, **over: prog_config(out, **{"data.shrink": "crop", **over}), tmp_path, 13)
    a = weights(run_dir(tmp_path / "whole") / "last.safetensors")
    train(prog_config(tmp_path / "resize"))
    c = weights(run_dir(tmp_path / "resize") / "last.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the windows are not the resized images
