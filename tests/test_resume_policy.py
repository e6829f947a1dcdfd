"""What a resumed run may change, and that no NaN/Inf ever reaches a checkpoint (issue: holes in the error
contract). Each case fails without its fix: an AttributeError or a 9-line size mismatch on resume, a
silently rewritten config.yaml, NaN checkpoints written after --opt.lr inf, or a resume that stops at once."""

from __future__ import annotations

import pytest
import torch
import yaml

from convnext.checkpoint import load_model, save_model
from convnext.cli import main
from convnext.errors import CheckpointError
from convnext.models import create_model
from convnext.train import TrainingDiverged, train
from convnext.train.logging import read_metrics
from convnext.train.state import load_train_state
from train_helpers import run_dir, tiny_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, **{"opt.epochs": 1}))
    return out


@pytest.mark.parametrize("change", [
    {"data.limit_train": 32}, {"data.batch_size": 4}, {"data.synthetic_samples": 48},
    {"model.overrides": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_size": 5}},
    {"model.name": "convnext_femto"}, {"runtime.seed": 1}, {"aug.mixup": 0.5},
])
def test_resume_with_a_config_that_trains_another_model_is_one_line_and_writes_nothing(finished_run, capsys, change):
    cfg = tiny_config(finished_run, **{"opt.epochs": 1, "runtime.resume": "auto", **change})
    before = {p.name: p.read_bytes() for p in run_dir(finished_run).iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"cannot resume with a different config \(") as e:
        train(cfg)
    key = next(iter(change))
    assert key in str(e.value) and "\n" not in str(e.value) and "--runtime.run_name NEW" in str(e.value)
    after = {p.name: p.read_bytes() for p in run_dir(finished_run).iterdir() if p.is_file()}
    assert after == before  # config.yaml, checkpoints and log untouched


def test_resume_may_extend_the_run_and_follows_the_new_schedule(tmp_path):
    train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    summary = train(tiny_config(tmp_path, **{"opt.epochs": 2, "runtime.resume": "auto", "runtime.log_every": 1}))
    assert summary["epochs"] == 2 and summary["resumed_from"]
    assert yaml.safe_load((run_dir(tmp_path) / "config.yaml").read_text())["opt"]["epochs"] == 2
    # the lr of the second epoch is the 2-epoch cosine schedule's, not the floor the 1-epoch one ended at
    fresh = tmp_path / "fresh"
    train(tiny_config(fresh, **{"opt.epochs": 2}))
    resumed_lr = [r["lr"] for r in read_metrics(run_dir(tmp_path) / "metrics.jsonl") if r["type"] == "step"]
    fresh_lr = [r["lr"] for r in read_metrics(run_dir(fresh) / "metrics.jsonl") if r["type"] == "step"]
    steps = len(fresh_lr) // 2
    assert resumed_lr[steps:] == pytest.approx(fresh_lr[steps:], rel=1e-6)


def test_an_infinite_lr_is_refused_before_any_work(tmp_path, capsys):
    argv = ["train", "--preset", "small", "--data.dataset", "synthetic", "--opt.lr", "inf",
            "--runtime.out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "opt.lr is NaN or infinite" in err
    assert not any(tmp_path.iterdir())


def test_an_overflowing_update_never_writes_a_checkpoint(tmp_path):
    # lr 1e300 (inf in float32): the first loss is finite, the update is not. The NaN/Inf steps after it are skipped (the
    # limit is set above the epoch's 8 steps), so the epoch ends and wants to save: nothing may be written.
    cfg = tiny_config(tmp_path, **{"opt.lr": 1e300, "opt.epochs": 1, "runtime.max_bad_steps": 100})
    with pytest.raises(TrainingDiverged, match=r"the weights hold NaN/Inf .* nothing written"):
        train(cfg)
    run = run_dir(tmp_path)
    assert not any((run / name).exists() for name in ("best.safetensors", "last.safetensors", "train_state.pt"))


def test_a_resume_starts_a_fresh_count_of_bad_steps_in_a_row(tmp_path):
    # the advice after a diverged run (a lower lr, then --resume auto) must not stop at once on the old count
    from convnext.train.distributed import DistInfo
    from convnext.train.loop import Trainer
    from convnext.train.state import save_train_state

    train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    state = load_train_state(run_dir(tmp_path))
    state.update(consecutive_bad=4, bad_steps_total=4)
    save_train_state(run_dir(tmp_path), {k: v for k, v in state.items() if k != "format"})
    trainer = Trainer(tiny_config(tmp_path, **{"opt.epochs": 2, "opt.lr": 1e-3, "runtime.resume": "auto",
                                               "runtime.max_bad_steps": 5}), DistInfo())
    assert trainer.consecutive_bad == 0 and trainer.bad_steps_total == 4
    trainer.logger.close()


def test_weights_with_nan_are_neither_written_nor_loaded(tmp_path):
    model = create_model("convnext_atto", num_classes=3, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    with torch.no_grad():
        model.head.fc.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN/Inf values \(first: head\.fc\.weight\); nothing written"):
        save_model(model, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    # a file written by something else: refused on load, one line, naming the tensor
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match=r"NaN/Inf values \(first: head\.fc\.weight\)"):
        load_model(tmp_path / "foreign.safetensors", model_name="convnext_atto", depths=(1, 1, 1, 1),
                   dims=(8, 16, 32, 64))
    assert main(["info", str(tmp_path / "foreign.safetensors"), "--model", "convnext_atto"]) == 2


# ---- a checkpoint's label describes the network it holds, and --arch reaches every --model command ----

SMALL_ARCH = ["--arch", "depths=[1,1,1,1]", "--arch", "dims=[8,16,32,64]"]


def test_overridden_architectures_are_not_labelled_with_the_registered_name(finished_run):
    from convnext.checkpoint import read_info

    info = read_info(run_dir(finished_run) / "best.safetensors")
    assert info.config.depths == (1, 1, 1, 1) and info.name is None  # not "convnext_atto" (2-2-6-2)


def test_a_converted_checkpoint_of_an_overridden_architecture_comes_back_with_arch(finished_run, tmp_path, capsys):
    from PIL import Image

    best = run_dir(finished_run) / "best.safetensors"
    official = tmp_path / "official.pth"
    assert main(["convert", str(best), str(official), "--to", "official"]) == 0
    # the official file has no metadata: --model alone builds convnext_atto, which it does not fit
    assert main(["convert", str(official), str(tmp_path / "x.safetensors"), "--to", "ours",
                 "--model", "convnext_atto"]) == 2
    assert main(["convert", str(official), str(tmp_path / "back.safetensors"), "--to", "ours",
                 "--model", "convnext_atto", *SMALL_ARCH]) == 0
    back, _ = load_model(tmp_path / "back.safetensors")
    original, _ = load_model(best)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), original.state_dict().values()))
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", str(official), str(tmp_path / "x.png"), "--model", "convnext_atto", *SMALL_ARCH,
                 "--device", "cpu"]) == 0
    assert main(["info", str(official), "--model", "convnext_atto", *SMALL_ARCH, "--json"]) == 0
    assert main(["eval", str(official), "--model", "convnext_atto", *SMALL_ARCH, "--dataset", "synthetic",
                 "--device", "cpu", "--workers", "0", "--limit", "8"]) == 2  # 10 synthetic classes vs the model's 4
    assert "the model has 4 classes but the dataset has 10" in capsys.readouterr().err
    assert main(["info", "convnext_atto", "--arch", "depths"]) == 2
    assert "--arch 'depths' must be KEY=VALUE" in capsys.readouterr().err
