"""Crash safety: SIGKILL mid-epoch + --resume auto gives bitwise-identical results; torn, stray and
failed (disk full) checkpoint writes never cost the previous checkpoint."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convnext.train import CheckpointWriteError, train
from convnext.train.logging import read_metrics
from convnext.train.state import PREV_NAME, STATE_NAME, find_resume_state, load_train_state
from train_helpers import comparable, run_dir, tiny_config, weights

# augmentation, mixup/cutmix, drop path and EMA on: resuming must replay every random draw
RESUME_OVER = {"aug.randaugment": True, "aug.mixup": 0.8, "aug.cutmix": 1.0, "reg.drop_path": 0.1,
               "reg.ema": True, "runtime.save_every_steps": 1, "opt.epochs": 2, "data.synthetic_samples": 32}


def _cli_args(out) -> list[str]:
    # the whole config as a file, as a user would keep it; the CLI adds --resume auto
    path = Path(out).parent / f"{Path(out).name}.yaml"
    tiny_config(out, **RESUME_OVER).save(path)
    return [sys.executable, "-m", "convnext", "train", "--config", str(path), "--resume", "auto"]


def _kill_after_state(out, min_step: int, timeout: float = 240) -> dict:
    """Start a CLI training run, SIGKILL it as soon as a checkpoint with step >= min_step exists."""
    proc = subprocess.Popen(_cli_args(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = run_dir(out) / STATE_NAME
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if state_path.exists():
                try:
                    if load_train_state(state_path)["step"] >= min_step:
                        break
                except Exception:  # noqa: BLE001 - being replaced right now; look again
                    pass
            time.sleep(0.02)
        else:
            raise AssertionError("no checkpoint appeared in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    found = find_resume_state(run_dir(out))
    assert found is not None
    return found[1]


def _resume_to_end(out) -> None:
    r = subprocess.run(_cli_args(out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from epoch" in r.stderr


def _assert_same_run(a, b) -> None:
    wa, wb = weights(run_dir(a) / "last.safetensors"), weights(run_dir(b) / "last.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_train_state(run_dir(a)), load_train_state(run_dir(b))
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    ma = comparable(read_metrics(run_dir(a) / "metrics.jsonl"))
    mb = comparable(read_metrics(run_dir(b) / "metrics.jsonl"))
    assert ma == mb


def test_sigkill_mid_epoch_then_resume_auto_is_bitwise_identical(tmp_path):
    ref = tmp_path / "ref"
    train(tiny_config(ref, **RESUME_OVER))  # uninterrupted: 2 epochs x 4 steps
    killed = tmp_path / "killed"
    state = _kill_after_state(killed, min_step=1)
    assert state["epoch"] == 0 and 0 < state["epoch_step"] < 4, "the kill should land mid-epoch"
    _resume_to_end(killed)
    _assert_same_run(ref, killed)


@pytest.mark.slow
def test_sigkill_at_several_moments(tmp_path):
    ref = tmp_path / "ref"
    train(tiny_config(ref, **RESUME_OVER))
    rng = random.Random(0)
    for i, min_step in enumerate(sorted(rng.sample(range(1, 7), 3))):
        out = tmp_path / f"k{i}"
        _kill_after_state(out, min_step)
        _kill_after_state(out, min_step + 1) if min_step + 1 < 7 else None  # a second kill after resuming
        _resume_to_end(out)
        _assert_same_run(ref, out)


def test_torn_current_state_falls_back_to_previous_and_stray_temp_files_are_ignored(tmp_path):
    out = tmp_path / "a"
    train(tiny_config(out, **{**RESUME_OVER, "opt.epochs": 1}))
    rd = run_dir(out)
    assert load_train_state(rd / STATE_NAME)["step"] == 4 and load_train_state(rd / PREV_NAME)["step"] == 3
    data = (rd / STATE_NAME).read_bytes()
    (rd / STATE_NAME).write_bytes(data[: len(data) // 3])  # as if the disk lost the tail
    (rd / f".{STATE_NAME}.abc123.tmp").write_bytes(data[:100])  # a kill during a write leaves this
    path, state = find_resume_state(rd)
    assert path.name == PREV_NAME and state["step"] == 3
    s = train(tiny_config(out, **{**RESUME_OVER, "opt.epochs": 1, "runtime.resume": "auto"}))
    assert s["steps"] == 4 and s["resumed_from"].endswith(PREV_NAME)
    assert not list(rd.glob(".*.tmp"))
    ref = tmp_path / "ref"
    train(tiny_config(ref, **{**RESUME_OVER, "opt.epochs": 1}))
    wa, wb = weights(rd / "last.safetensors"), weights(run_dir(ref) / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("target", ["state", "weights"])
def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, target):
    out = tmp_path / "a"
    cfg = tiny_config(out, **{"opt.epochs": 2, "data.synthetic_samples": 32})
    train(cfg.replace({"opt.epochs": 1}))
    rd = run_dir(out)
    before = {p.name: p.read_bytes() for p in rd.iterdir() if p.suffix in (".pt", ".safetensors")}

    def full_disk(obj, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if target == "state":
        monkeypatch.setattr("convnext.train.state.torch.save", full_disk)
    else:
        # checkpoint.py binds safetensors' save_file at import: patch the name save_model calls
        monkeypatch.setattr("convnext.checkpoint.save_file", lambda tensors, path, metadata=None: full_disk(0, path))
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*previous checkpoint is intact.*"
                                                   r"--resume auto"):
        train(cfg.replace({"runtime.resume": "auto"}))
    monkeypatch.undo()
    assert not list(rd.glob(".*.tmp"))
    assert load_train_state(rd)["step"] == 4  # the last good state: a failed save never moves it forward
    for name in ("last.safetensors", "best.safetensors"):
        assert (rd / name).read_bytes() == before[name] or target == "state"
    if target == "state":
        assert (rd / STATE_NAME).read_bytes() == before[STATE_NAME]
    # after freeing space, --resume auto finishes the run
    s = train(cfg.replace({"runtime.resume": "auto"}))
    assert s["steps"] == 8
