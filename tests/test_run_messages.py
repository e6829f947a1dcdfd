"""What a training run tells its user: no claim that is not true, no terminal frames in a log file."""

from __future__ import annotations

import errno
import os
import re

import convnext.checkpoint
from convnext.cli import main
from reliability_helpers import train_argv


def _train(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_full_disk_before_the_first_checkpoint_does_not_claim_one_is_kept(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(convnext.checkpoint, "save_file", full)
    rc, _, err = _train(train_argv(tmp_path), capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "CheckpointWriteError" in last and "No space left on device" in last
    assert "no checkpoint of this run existed yet" in last and "previous checkpoint is intact" not in last


def test_a_damaged_training_state_is_reported_when_resume_falls_back(tmp_path, capsys):
    rc, _, err = _train(train_argv(tmp_path, epochs=1), capsys)
    assert rc == 0, err
    state = tmp_path / "run" / "train_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # torn
    rc, _, err = _train(train_argv(tmp_path, "--resume", "auto", epochs=1), capsys)
    assert rc == 0, err
    assert f"warning: {state} is damaged; resuming from train_state.prev.pt (step 6) instead" in err
    assert "resuming from epoch 0 step 6" in err


def test_a_log_file_gets_no_progress_frames_and_the_summary_names_the_best_weights(tmp_path, capsys):
    # stderr is not a terminal here (captured), as when the output goes to a log file
    argv = [a if a != "false" or prev != "--runtime.progress" else "true"
            for prev, a in zip([None, *train_argv(tmp_path)], train_argv(tmp_path))]
    assert "--runtime.progress" in argv and argv[argv.index("--runtime.progress") + 1] == "true"
    rc, out, err = _train(argv, capsys)
    assert rc == 0, err
    assert "\r" not in err and "step/s" not in err
    best = convnext.checkpoint.read_info(tmp_path / "run" / "best.safetensors").train["weights"]
    assert re.search(rf"\(best [\d.]+% at epoch \d+, {'EMA' if best == 'ema' else 'model'} weights\)", out), out
