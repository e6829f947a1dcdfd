"""What a training run tells its user: no claim that is not true, no terminal frames in a log file."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

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


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def test_eval_takes_the_dataset_from_the_checkpoint(tmp_path, capsys):
    if not (Path(FASHION_MNIST) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; `make test` does)")
    argv = train_argv(tmp_path, epochs=1)
    argv[argv.index("synthetic")] = "fashion_mnist"
    argv += ["--data.root", FASHION_MNIST, "--data.limit_train", "64", "--data.limit_val", "16"]
    rc, _, err = _train(argv, capsys)
    assert rc == 0, err
    best = str(tmp_path / "run" / "best.safetensors")
    assert main(["eval", best, "--limit", "40", "--workers", "0", "--device", "cpu", "--json"]) == 0  # no --dataset
    r = json.loads(capsys.readouterr().out)
    assert r["count"] == 40 and r["classes"][0] == "T-shirt/top" and len(r["per_class"]) == 10
    # a run on synthetic data cannot be regenerated from its name: eval wants a folder, as before
    rc, _, err = _train(train_argv(tmp_path / "syn", epochs=1), capsys)
    assert main(["eval", str(tmp_path / "syn" / "run" / "best.safetensors"), "--device", "cpu"]) == 2
    assert "--dataset folder needs --data-root" in capsys.readouterr().err


def test_a_diverged_run_claims_a_kept_checkpoint_only_when_there_is_one(tmp_path, capsys):
    # lr 1e300 (inf in float32): NaN from the second step on, the run stops before its first checkpoint
    rc, _, err = _train(train_argv(tmp_path, "--opt.lr", "1e300", "--runtime.max_bad_steps", "2"), capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "TrainingDiverged" in last and f"no checkpoint was written yet in {tmp_path / 'run'}" in last
    assert "kept" not in last
    # with a checkpoint from a good epoch, the same failure on resume says it is kept
    rc, _, err = _train(train_argv(tmp_path / "ok", epochs=1), capsys)
    assert rc == 0, err
    rc, _, err = _train(train_argv(tmp_path / "ok", "--opt.lr", "1e300", "--runtime.max_bad_steps", "2",
                                   "--resume", "auto"), capsys)
    assert rc == 1
    assert f"the last good checkpoint is kept in {tmp_path / 'ok' / 'run'}" in err.strip().splitlines()[-1]
