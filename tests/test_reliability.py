"""Reliability and security (issue 7): every protection is driven through the real engine, the real
writers and the real CLI, and each test fails if its protection is removed.

1. hostile checkpoints  2. crash safety (kill -9, full disk)  3. bad data  4. NaN/Inf guard
5. bad configuration and inputs on every CLI command  6. determinism

Runs are tiny (ConvNeXt-atto with one block per stage and dims 8..64, 32x32 synthetic images,
16 optimizer steps) and single-threaded: on a loaded 2-core machine a 2-thread CPU run is ~10x slower
from OpenMP oversubscription, and one thread everywhere also makes in-process and subprocess runs
bitwise comparable.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convnext.cli import COMMANDS
from convnext.checkpoint import ModelInfo, Preprocess, load_model, read_info, save_model
from convnext.cli import main
from convnext.errors import CheckpointError, UsageError
from convnext.models import create_model
from convnext.train.logging import read_metrics
from convnext.train.state import PREV_NAME, STATE_NAME, find_resume_state, load_train_state
from convnext.checkpoint import export_weights
from convnext.weights import load_weights
from train_helpers import poison_forward, run_cli
from reliability_helpers import (STEPS_PER_EPOCH, popen_convnext, run_convnext, snapshot, train_argv,
                                 write_hostile_legacy, write_hostile_zip)

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
# every source of training randomness on: RandAugment, random erasing, Mixup/CutMix, drop path, EMA
FULL_AUG = ["--aug.randaugment", "true", "--aug.random_erasing", "0.25", "--aug.mixup", "0.8",
            "--aug.cutmix", "1.0", "--reg.drop_path", "0.1"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses
    yield
    torch.set_num_threads(before)


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    return lines[0]


def records(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in read_metrics(run / "metrics.jsonl")]


def tiny_checkpoint(path: Path, in_chans: int = 3, classes=("a", "b", "c", "d")) -> Path:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=len(classes), in_chans=in_chans, **TINY)
    mean, std = (0.5,) * in_chans, (0.25,) * in_chans
    info = ModelInfo(config=model.cfg, name="convnext_atto", class_names=list(classes),
                     preprocess=Preprocess(input_size=32, mean=mean, std=std, crop_ratio=1.0, channels=in_chans))
    return save_model(model, path, info)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: what every killed-and-resumed run must reproduce bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    try:
        assert main(train_argv(out, *FULL_AUG)) == 0
    finally:  # later test modules compare runs made with torch's default thread count
        torch.set_num_threads(before)
    run = out / "run"
    return {"run": run, "weights": load_file(str(run / "last.safetensors")),
            "best": load_file(str(run / "best.safetensors")), "ema": load_file(str(run / "last_ema.safetensors")),
            "records": records(run)}


def assert_same_as_reference(run: Path, reference: dict) -> None:
    got = load_file(str(run / "last.safetensors"))
    assert got.keys() == reference["weights"].keys()
    assert all(torch.equal(got[k], reference["weights"][k]) for k in got), "weights differ from the uninterrupted run"
    best = load_file(str(run / "best.safetensors"))
    assert all(torch.equal(best[k], reference["best"][k]) for k in best)
    ema = load_file(str(run / "last_ema.safetensors"))
    assert ema.keys() == reference["ema"].keys() and all(torch.equal(ema[k], reference["ema"][k]) for k in ema)
    assert records(run) == reference["records"]


# ==== 1. hostile checkpoints =====================================================================

def test_code_running_pickles_are_refused_and_run_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = [write_hostile_zip(tmp_path / "zip.pth", marker), write_hostile_legacy(tmp_path / "legacy.pt", marker),
             write_hostile_zip(tmp_path / "pytorch_model.bin", marker)]
    for f in files:
        for load in (lambda: load_weights(create_model("convnext_atto", **TINY), f),
                     lambda: load_model(f, model_name="convnext_atto")):
            with pytest.raises(CheckpointError) as e:
                load()
            msg = str(e.value)
            assert "\n" not in msg and str(f) in msg and "refused" in msg and "weights_only=True" in msg
            assert "would import and call exec" in msg  # says what the file tried to do
        assert not marker.exists()
    # the same files through every command that reads weights: exit 2, one line, nothing runs
    ckpt = tiny_checkpoint(tmp_path / "good.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    hostile = str(files[0])
    state_dir = tmp_path / "hostile_run"
    state_dir.mkdir()
    write_hostile_zip(state_dir / STATE_NAME, marker)
    for argv, names in ((["predict", hostile, str(image), "--model", "convnext_atto"], hostile),
                        (["eval", hostile, "--model", "convnext_atto", "--dataset", "synthetic"], hostile),
                        (["convert", hostile, str(tmp_path / "o.safetensors"), "--to", "ours", "--model",
                          "convnext_atto"], hostile),
                        (["export", hostile, "--model", "convnext_atto", "-o", str(tmp_path / "o.onnx")], hostile),
                        (["info", hostile, "--model", "convnext_atto"], hostile),
                        (train_argv(tmp_path / "o", "--model.init", hostile), hostile),
                        (train_argv(tmp_path / "o", "--resume", str(state_dir / STATE_NAME)),
                         str(state_dir / STATE_NAME))):
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2, (argv, err)
        line = one_line(err)
        assert names in line and ("refused" in line or "unreadable" in line), line
        assert not marker.exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.safetensors").exists()
    assert not (tmp_path / "o.onnx").exists() and ckpt.is_file()
    # --resume auto over a run directory whose state is hostile: skipped, never unpickled unsafely
    assert find_resume_state(state_dir) is None and not marker.exists()
    # the payload is live: an unsafe load really would have run it (so the checks above can fail)
    torch.load(files[0], weights_only=False)
    assert marker.read_text() == "pwned"


def test_config_files_cannot_construct_python_objects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'opt: !!python/object/apply:os.system ["touch {marker}"]\n')
    rc, out, err = run_cli(["train", "--config", str(evil), "--print-config"], capsys)
    assert rc == 2 and out == "" and not marker.exists()
    line = one_line(err)
    assert f"{evil}: cannot parse config" in line and "python/object/apply:os.system" in line


def test_end_to_end_hostile_checkpoint_in_a_real_process(tmp_path):
    marker = tmp_path / "pwned"
    hostile = write_hostile_zip(tmp_path / "model.pth", marker)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    r = run_convnext(["predict", str(hostile), str(image), "--model", "convnext_atto"])
    assert r.returncode == 2 and not marker.exists()
    assert one_line(r.stderr).startswith(f"convnext predict: error: {hostile}: refused")
    assert r.stdout == ""


def _damaged(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    good = tiny_checkpoint(tmp_path / "good.safetensors")
    data = good.read_bytes()
    out = {}
    p = tmp_path / "zero.safetensors"
    p.write_bytes(b"")
    out["zero-byte safetensors"] = (p, "empty (0 bytes)")
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(data[: len(data) // 2])
    out["truncated safetensors"] = (p, "not a readable safetensors file")
    p = tmp_path / "header_length.safetensors"
    p.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    out["header length beyond the file"] = (p, "not a readable safetensors file")
    p = tmp_path / "header_json.safetensors"
    n = int.from_bytes(data[:8], "little")
    p.write_bytes(data[:8] + b"#" * n + data[8 + n:])
    out["garbage header JSON"] = (p, "not a readable safetensors file")
    model = create_model("convnext_atto", num_classes=4, **TINY)
    export_weights(model, tmp_path / "official.pth", layout="official")
    pth = (tmp_path / "official.pth").read_bytes()
    p = tmp_path / "truncated.pth"
    p.write_bytes(pth[: len(pth) // 2])
    out["truncated .pth"] = (p, "truncated or corrupt")
    p = tmp_path / "zero.pth"
    p.write_bytes(b"")
    out["zero-byte .pth"] = (p, "empty (0 bytes)")
    p = tmp_path / "random.bin"
    p.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
    out["random bytes .bin"] = (p, "not a readable PyTorch checkpoint")
    p = tmp_path / "pytorch_model.bin"  # a failed download: the server's error page saved as weights
    p.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    out["HTML error page .bin"] = (p, "not a readable PyTorch checkpoint")
    # metadata says one architecture, the tensors are another (a renamed or tampered file)
    other = create_model("convnext_atto", num_classes=4, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    p = save_model(other, tmp_path / "wrong_arch.safetensors", read_info(good))
    out["metadata for another architecture"] = (p, "has shape")
    return out


def test_damaged_checkpoints_give_one_clear_line(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    for what, (path, says) in _damaged(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_model(path, model_name="convnext_atto")
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and says in msg, (what, msg)
        # ... and what to do about it
        assert any(hint in msg for hint in ("re-download", "re-export", "build the model")), (what, msg)
        # never the unsafe advice torch's own message gives (re-run with weights_only=False)
        assert "set to `False`" not in msg and "weights_only=False" not in msg, (what, msg)
        before = snapshot(tmp_path)
        rc, out, err = run_cli(["predict", str(path), str(image), "--model", "convnext_atto"], capsys)
        assert rc == 2 and out == "" and says in one_line(err), (what, err)
        assert snapshot(tmp_path) == before


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the TorchScript file is made to be refused
def test_an_exported_model_given_as_a_checkpoint_is_named_and_the_way_out_given(tmp_path, capsys):
    # A user who passes what `convnext export` wrote to predict/eval/convert hears what the file is and what to pass
    # instead, not a pickle reader's "truncated or corrupt" (ONNX) or "refused ... discard the file" (TorchScript).
    model = create_model("convnext_atto", num_classes=3, in_chans=1, drop_path_rate=0.0).eval()
    example = torch.randn(1, 1, 32, 32)
    torch.jit.save(torch.jit.trace(model, example), tmp_path / "m.pt")
    torch.export.save(torch.export.export(model, (example,)), tmp_path / "m.pt2")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x0a\x12\x07pytorch")  # an ONNX protobuf's first fields
    image = tmp_path / "x.png"
    Image.new("L", (32, 32)).save(image)
    for name, says, runtime in (("m.pt", "a TorchScript archive", "torch.jit.load"),
                                ("m.pt2", "a torch.export program", "torch.export.load"),
                                ("m.onnx", "an ONNX model", "onnxruntime")):
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / name, model_name="convnext_atto")
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: {says}, not a weights checkpoint; pass the checkpoint it was "
                              "exported from") and msg.endswith(f"run the file with {runtime}"), msg
        rc, out, err = run_cli(["predict", str(tmp_path / name), str(image)], capsys)
        assert rc == 2 and out == "" and one_line(err) == f"convnext predict: error: {msg}", err
    # a torch.save checkpoint is a zip too, and still reads
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    assert load_model(tmp_path / "ok.pt", model_name="convnext_atto", num_classes=3, in_chans=1)[0] is not None


def test_weights_for_a_different_architecture_name_both(tmp_path, capsys):
    atto = create_model("convnext_atto", num_classes=4, **TINY)
    export_weights(atto, tmp_path / "atto_timm.safetensors", layout="timm")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "atto_timm.safetensors", model_name="convnext_femto")
    msg = str(e.value)
    says = "in the model (timm layout); the weights look like (depths (1, 1, 1, 1), dims (8, 16, 32, 64))"
    assert "\n" not in msg and "in the checkpoint but" in msg and says in msg and "--model NAME" in msg
    rc, _, err = run_cli(["convert", str(tmp_path / "atto_timm.safetensors"), str(tmp_path / "x.pth"),
                          "--to", "official", "--model", "convnext_femto"], capsys)
    assert rc == 2 and says in one_line(err)
    assert not (tmp_path / "x.pth").exists()


# ==== 2. crash safety ===========================================================================

def _check_every_named_checkpoint_is_readable(run: Path) -> None:
    for name in ("last.safetensors", "last_ema.safetensors", "best.safetensors"):
        if (run / name).exists():
            load_model(run / name)
    for name in (STATE_NAME, PREV_NAME):
        if (run / name).exists():
            load_train_state(run / name)


def _resume_and_check(out: Path, reference: dict, capsys) -> None:
    run = out / "run"
    rc, stdout, err = run_cli(train_argv(out, *FULL_AUG, "--resume", "auto"), capsys)
    assert rc == 0, err
    assert f"{TOTAL_STEPS} steps" in stdout
    assert_same_as_reference(run, reference)
    _check_every_named_checkpoint_is_readable(run)


# (fault, checkpoint step --resume auto must find). Saves happen every 2 steps and at the end of
# each epoch (step 8); each save writes best.safetensors (end of an epoch that improved), then
# last.safetensors, last_ema.safetensors, then train_state.pt, the file --resume trusts.
KILLS = [
    ("step:5", 4),    # mid-epoch, between two checkpoints
    ("state:3", 4),   # tearing the third train_state.pt write (step 6)
    ("ema:3", 4),     # tearing the third last_ema.safetensors write (step 6), after its last.safetensors
    ("step:1", None),  # before the first checkpoint exists: resume must start over
]
SLOW_KILLS = [
    ("model:2", 2),   # tearing last.safetensors at step 4, so its train_state.pt is never written
    ("model:4", 6),   # tearing last.safetensors at the end of epoch 0, after best.safetensors
    ("link:3", 6),    # at step 8, between hard-linking the backup and writing the new state
    ("state:4", 6),   # tearing the end-of-epoch state write
    ("step:12", 10),  # mid second epoch (step 12 done, its checkpoint not yet written)
]


@pytest.mark.parametrize("fault,expected_step", KILLS + [pytest.param(*k, marks=pytest.mark.slow) for k in SLOW_KILLS],
                         ids=[k[0] for k in KILLS + SLOW_KILLS])
def test_kill_9_then_resume_auto_reproduces_the_uninterrupted_run(fault, expected_step, reference, tmp_path, capsys):
    r = run_convnext(train_argv(tmp_path, *FULL_AUG), env={"CONVNEXT_KILL_AT": fault})
    assert r.returncode == -9, r.stderr[-2000:]
    run = tmp_path / "run"
    _check_every_named_checkpoint_is_readable(run)
    found = find_resume_state(run)
    assert (found[1]["step"] if found else None) == expected_step
    _resume_and_check(tmp_path, reference, capsys)


def test_kill_during_the_final_save_still_leaves_a_best_checkpoint(tmp_path, capsys):
    # One epoch: the end-of-epoch save (the 4th last.safetensors) is the run's last; die inside it.
    # Resuming must not report a best checkpoint that is not there (train_state.pt already saying
    # "best is saved" while best.safetensors was never written).
    r = run_convnext(train_argv(tmp_path, epochs=1), env={"CONVNEXT_KILL_AT": "model:4"})
    assert r.returncode == -9, r.stderr[-2000:]
    rc, out, err = run_cli(train_argv(tmp_path, "--resume", "auto", "--json", epochs=1), capsys)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["steps"] == STEPS_PER_EPOCH and summary["best_checkpoint"]
    model, info = load_model(summary["best_checkpoint"])
    assert info.train["epoch"] == 1 and info.train["best_top1"] == summary["best_val_top1"]  # epochs done
    _check_every_named_checkpoint_is_readable(tmp_path / "run")


def test_resume_auto_over_damaged_states_refuses_instead_of_starting_over(tmp_path, capsys):
    # Both training states unreadable (a bad disk, a partial copy of the run directory): starting
    # over would silently overwrite the run's best/last checkpoints. It must stop and say so.
    assert main(train_argv(tmp_path, epochs=1)) == 0
    run = tmp_path / "run"
    for name in (STATE_NAME, PREV_NAME):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    before = snapshot(tmp_path)
    rc, out, err = run_cli(train_argv(tmp_path, "--resume", "auto", epochs=2), capsys)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert str(run) in line and STATE_NAME in line and "--runtime.overwrite true" in line
    assert snapshot(tmp_path) == before


def test_kill_9_from_outside_at_a_random_moment(reference, tmp_path, capsys):
    # The parent sends SIGKILL wherever the child happens to be (a step, a save, an evaluation).
    rng = random.Random(os.getpid())
    marker = tmp_path / "reached"
    step = rng.randint(2, TOTAL_STEPS - 3)
    proc = popen_convnext(train_argv(tmp_path, *FULL_AUG),
                          env={"CONVNEXT_MARK_AT": f"step:{step}", "CONVNEXT_MARK_FILE": str(marker)})
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    delay = rng.uniform(0, 0.05)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    print(f"killed after step {step} + {delay:.3f} s")  # shown if the test fails
    assert marker.exists() and proc.returncode == -signal.SIGKILL  # it was mid-run, and the kill is what ended it
    run = tmp_path / "run"
    _check_every_named_checkpoint_is_readable(run)
    _resume_and_check(tmp_path, reference, capsys)


def _disk_full_after(n_bytes: int):
    def writer(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x00" * n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return writer


@pytest.mark.parametrize("where", ["train_state", "safetensors"])
def test_full_disk_keeps_the_previous_checkpoint_and_says_so(where, reference, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    from convnext import checkpoint

    run = tmp_path / "run"
    kept: dict[str, bytes] = {}
    calls = {"n": 0}
    real_torch_save, real_save_file = torch.save, safetensors.torch.save_file

    def fill_up_on_the_third_save(real):
        def save(obj, path, *args, **kwargs):
            if Path(path).parent == run and (where == "safetensors") == (real is real_save_file):
                calls["n"] += 1
                # step 6, the third save, fills the disk: each save before it wrote one train_state.pt and two
                # safetensors files (last, last_ema)
                if calls["n"] == (5 if where == "safetensors" else 3):
                    kept.update({p.name: p.read_bytes() for p in run.iterdir() if p.is_file()})
                    return _disk_full_after(1000)(obj, path)
            return real(obj, path, *args, **kwargs)
        return save

    monkeypatch.setattr(torch, "save", fill_up_on_the_third_save(real_torch_save))
    # checkpoint.py binds safetensors' save_file at import: patch the name save_model calls
    monkeypatch.setattr(checkpoint, "save_file", fill_up_on_the_third_save(real_save_file))
    rc, _, err = run_cli(train_argv(tmp_path, *FULL_AUG), capsys)
    assert rc == 1
    line = one_line(err)
    assert line.startswith("convnext train: failed: CheckpointWriteError: could not write a checkpoint")
    assert "No space left on device" in line and "previous checkpoint is intact" in line and "--resume auto" in line
    # nothing torn, no temp file left behind, and the checkpoint of step 4 is still there, unchanged
    names = {p.name for p in run.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]
    assert {"last.safetensors", STATE_NAME} <= kept.keys()
    for name in ("last.safetensors", STATE_NAME):
        assert (run / name).read_bytes() == kept[name], name
    _check_every_named_checkpoint_is_readable(run)
    assert find_resume_state(run)[1]["step"] == 4
    # space freed: resuming gives exactly the run that never hit the full disk
    monkeypatch.setattr(torch, "save", real_torch_save)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    _resume_and_check(tmp_path, reference, capsys)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real small filesystem (tmpfs); skipped where mounting is not allowed (non-root, containers)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = []

    def mount(size_kb: int, remount: bool = False) -> Path:
        opts = f"{'remount,' if remount else ''}size={size_kb}k"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
        mounted.append(mnt)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("size_kb,kept_step", [(2000, 2), (200, None)], ids=["state_write_fails", "first_write_fails"])
def test_a_really_full_disk_is_reported_and_keeps_the_previous_checkpoint(size_kb, kept_step, tiny_disk, reference,
                                                                           capsys):
    # 2000 KiB holds one checkpoint (last.safetensors 0.25 MB + train_state.pt 1.1 MB) but not the
    # second train_state.pt next to the first; 200 KiB does not even hold last.safetensors. The
    # writers then fail with their own errors (torch: "unexpected pos", safetensors: os error 28).
    disk = tiny_disk(size_kb)
    rc, _, err = run_cli(train_argv(disk, *FULL_AUG, "--runtime.tensorboard", "false"), capsys)
    assert rc == 1
    line = one_line(err)
    assert line.startswith("convnext train: failed: CheckpointWriteError: could not write a checkpoint"), line
    # it says a checkpoint is kept only where one is (the 200 KiB disk never held one)
    kept = "previous checkpoint is intact" if kept_step else "no checkpoint of this run existed yet"
    assert "MB free" in line and kept in line and "--resume auto" in line
    run = disk / "run"
    assert not list(run.glob(".*.tmp"))
    _check_every_named_checkpoint_is_readable(run)
    found = find_resume_state(run)
    assert (found[1]["step"] if found else None) == kept_step
    tiny_disk(64_000, remount=True)  # space freed
    rc, _, err = run_cli(train_argv(disk, *FULL_AUG, "--runtime.tensorboard", "false", "--resume", "auto"), capsys)
    assert rc == 0, err
    assert_same_as_reference(run, reference)


# ==== 3. bad data ================================================================================

def _image(path: Path, mode: str, seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(path)
        return
    rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    rgb.convert(mode).save(path)


def _folder_dataset(root: Path, bad: bool = True) -> list[Path]:
    """root/{train,val}/{a,b}: good images in several modes, plus (train) one bad file of each kind."""
    bad_files = []
    for split, n in (("train", 6), ("val", 2)):
        for c, cls in enumerate(("a", "b")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                _image(d / f"{i}.png", "RGB", seed=100 * c + i + (50 if split == "val" else 0))
    # other modes are converted, not skipped
    a = root / "train" / "a"
    _image(a / "cmyk.jpg", "CMYK", 1)
    _image(a / "rgba.png", "RGBA", 2)
    _image(a / "palette.png", "P", 3)
    _image(a / "gray.png", "L", 4)
    _image(a / "deep.png", "I;16", 5)
    if bad:
        b = root / "train" / "b"
        jpg = b / "truncated.jpg"
        _image(jpg, "RGB", 6, size=64)
        jpg.write_bytes(jpg.read_bytes()[:300])
        (b / "zero.png").write_bytes(b"")
        (b / "notes.txt").write_text("not an image")
        (b / "fake.png").write_text("<html>a saved web page</html>")
        vb = root / "val" / "a" / "half.png"
        _image(vb, "RGB", 7, size=64)
        vb.write_bytes(vb.read_bytes()[:100])
        bad_files = [jpg, b / "zero.png", b / "notes.txt", b / "fake.png", vb]
    return bad_files


def _folder_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return train_argv(out, "--data.dataset", "folder", "--data.root", str(root), "--data.batch_size", "4",
                      "--opt.epochs", "1", *extra)


def test_make_install_refuses_a_disk_too_small_for_the_venv_before_creating_it(tmp_path):
    """`make install` (which `make test` and `make demo` run first) checks the free space before it creates .venv:
    torch's CUDA build is ~6 GB on x86_64, and a full disk used to fail halfway through pip. Here the need is raised
    above any disk (VENV_GB) so the check must refuse, in one line, with nothing created."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(root / name, tmp_path / name)
    done = subprocess.run(["make", "--no-print-directory", "install", "VENV_GB=1000000000"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    (line,) = done.stdout.strip().splitlines()
    assert "needs ~1000000000 GB" in line and "free disk space" in line
    assert not (tmp_path / ".venv").exists()


def test_bad_image_files_are_skipped_warned_and_counted_in_the_run_log(tmp_path, capsys):
    root = tmp_path / "data"
    bad = _folder_dataset(root)
    rc, out, err = run_cli(_folder_argv(root, tmp_path / "out"), capsys)
    assert rc == 0, err
    for f in bad:  # one warning per bad file, naming it and the reason
        assert sum(f"skipping {f}:" in ln for ln in err.splitlines()) == 1, f
    assert "zero-byte file" in err and "not an image file (extension .txt)" in err and "cannot be decoded" in err
    assert f"{len(bad)} bad image file(s) skipped" in out
    epochs = [r for r in read_metrics(tmp_path / "out" / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["bad_images"] for r in epochs] == [len(bad)]
    # 12 RGB + 5 other-mode train images were used: 17 // batch 4 = 4 steps; val: 4 good of 5
    assert epochs[0]["step"] == 4 and epochs[0]["val_count"] == 4


def test_eval_warns_one_plain_line_per_bad_image_and_reports_the_count(tmp_path, capsys):
    root = tmp_path / "data"
    _folder_dataset(root)
    (root / "train").rename(tmp_path / "unused")  # eval reads root/val
    half = root / "val" / "a" / "half.png"
    model = create_model("convnext_atto", num_classes=2)
    save_model(model, tmp_path / "m.safetensors", ModelInfo(model.cfg, "convnext_atto", class_names=["a", "b"]))
    rc, out, err = run_cli(["eval", str(tmp_path / "m.safetensors"), "--dataset", "folder", "--data-root", str(root),
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipping {half}: cannot be decoded")
    assert out.splitlines()[0].startswith("4 images (1 unreadable file(s) skipped): top-1")
    rc, out, _ = run_cli(["eval", str(tmp_path / "m.safetensors"), "--dataset", "folder", "--data-root", str(root),
                          "--json", "--device", "cpu"], capsys)
    report = json.loads(out)
    assert report["bad_images"] == 1 and report["count"] == 4
    assert [b["path"] for b in report["bad_files"]] == [str(half)] and "truncated" in report["bad_files"][0]["reason"]


def test_strict_data_fails_fast_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "data"
    _folder_dataset(root)
    before = snapshot(tmp_path)
    rc, out, err = run_cli(_folder_argv(root, tmp_path / "out", "--data.strict", "true"), capsys)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert "convnext train: error:" in line and str(root / "train" / "b") in line and "drop --data.strict" in line
    assert snapshot(tmp_path) == before


def _empty_class(root: Path) -> str:
    _folder_dataset(root, bad=False)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    _image(root / "val" / "c" / "0.png", "RGB", 9)
    return f"{root / 'train' / 'c'}: class folder holds no usable images"


def _class_of_bad_files(root: Path) -> str:
    _folder_dataset(root, bad=False)
    for split in ("train", "val"):
        (root / split / "c").mkdir()
        (root / split / "c" / "x.png").write_bytes(b"")
    return "class folder holds no usable images (1 file(s))"


def _empty_dataset(root: Path) -> str:
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    return f"{root / 'train'}: no class folders"


def _mismatched_classes(root: Path) -> str:
    _folder_dataset(root, bad=False)
    (root / "val" / "b").rename(root / "val" / "bb")
    return "train and val have different classes (only in train: ['b'], only in val: ['bb'])"


def _no_val_split(root: Path) -> str:
    _folder_dataset(root, bad=False)
    import shutil

    shutil.rmtree(root / "val")
    return f"{root / 'val'}: missing"


@pytest.mark.parametrize("make", [_empty_class, _class_of_bad_files, _empty_dataset, _mismatched_classes, _no_val_split],
                         ids=lambda f: f.__name__.strip("_"))
def test_unusable_datasets_are_clear_errors_before_training(make, tmp_path, capsys):
    says = make(tmp_path / "data")
    before = snapshot(tmp_path)
    rc, out, err = run_cli(_folder_argv(tmp_path / "data", tmp_path / "out"), capsys)
    assert rc == 2 and out == ""
    assert says in one_line(err)
    assert snapshot(tmp_path) == before


# ==== 4. NaN / Inf ==============================================================================

@pytest.mark.parametrize("kind", ["inf", "nan", "nan_grad"])
def test_a_non_finite_step_is_skipped_and_counted(kind, tmp_path, capsys, monkeypatch):
    poison_forward(monkeypatch, {3}, kind)
    rc, out, err = run_cli(train_argv(tmp_path, "--opt.epochs", "1"), capsys)
    assert rc == 0, err
    assert "warning: step 3: loss/gradient is NaN or Inf; step skipped (1 in a row)" in err
    assert "1 NaN/Inf step(s) skipped" in out
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in log if r["type"] == "step"]
    assert [r["skipped_steps"] for r in steps] == [0, 0] + [1] * 6
    assert (steps[2]["loss"] is None) == (kind != "nan_grad")
    assert [r["skipped_steps"] for r in log if r["type"] == "epoch"] == [1]
    w = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())
    state = load_train_state(tmp_path / "run")
    moments = list(_tensors(state["optimizer"]))  # the preset's Muon + AdamW: {"muon": ..., "adamw": ...}
    assert moments and all(torch.isfinite(v).all() for v in moments)


def _tensors(tree):
    """Every tensor in a nest of dicts and lists (an optimizer's state dict)."""
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(reference, tmp_path, capsys, monkeypatch):
    # steps 5 and 6 go bad; checkpoints exist for steps 2 and 4
    poison_forward(monkeypatch, {5, 6, 7, 8}, "nan")
    rc, _, err = run_cli(train_argv(tmp_path, *FULL_AUG, "--runtime.max_bad_steps", "2"), capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("convnext train: failed: TrainingDiverged: training diverged: 2 consecutive steps")
    assert "lower --opt.lr" in last and "--runtime.amp none (fp32)" in last and "--resume auto" in last
    run = tmp_path / "run"
    _check_every_named_checkpoint_is_readable(run)
    state = load_train_state(run)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "last.safetensors")).values())
    # the fault gone (e.g. a lower lr would be the user's fix; here the bad batch is simply gone),
    # resuming continues from step 4 exactly as the run that never diverged
    monkeypatch.undo()
    torch.set_num_threads(1)
    _resume_and_check(tmp_path, reference, capsys)


# ==== 5. bad configuration and inputs, every command =============================================

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    ckpt = tiny_checkpoint(d / "model.safetensors")
    foreign = d / "timm.safetensors"
    export_weights(create_model("convnext_atto", num_classes=4, **TINY), foreign, layout="timm")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(d / "x.png")
    (d / "exists.pth").write_bytes(b"keep me")
    save_model(create_model("convnext_atto", num_classes=4, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
               d / "other_arch.safetensors")
    (d / "broken.yaml").write_text("opt:\n  lr: [0.1, 0.2\n  epochs: 3\n")
    (d / "exists.onnx").write_bytes(b"keep me")
    (d / "afile").write_bytes(b"a file, not a folder")
    (d / "not_a_study.json").write_text('{"steps": 3}')
    (d / "preset_list.yaml").write_text("preset: [small]\n")
    (d / "latin1.yaml").write_bytes(b"opt:\n  lr: 0.001 # \xe9t\xe9\n")
    # metadata of one architecture over the tensors of another (a file altered after saving)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(d / "other_arch.safetensors")), str(d / "tampered.safetensors"), metadata=metadata)
    return d


T = train_argv("OUT")
BAD_INPUTS = {
    # train
    "train: unknown model": (T + ["--model.name", "convnext_tny"], "did you mean convnext_tiny"),
    "train: image below total stride": (T + ["--data.image_size", "16"],
                                        "data.image_size=16 is smaller than the network's total stride 32"),
    "train: stem stride makes it bigger": (T + ["--set", "model.overrides.stem_patch_size=8", "--data.image_size", "32"],
                                           "smaller than the network's total stride 64"),
    "train: batch size 0": (T + ["--data.batch_size", "0"], "data.batch_size=0 must be >= 1"),
    "train: holdout takes every training image": (T + ["--data.holdout", "64"],
                                                   "data.holdout=64 must leave training images"),
    "train: image size the stem cannot tile": (T + ["--data.image_size", "34"],
                                               "data.image_size=34 is not a multiple of the stem's patch size 4"),
    "train: negative lr": (T + ["--opt.lr", "-0.001"], "opt.lr=-0.001 must be > 0"),
    "train: zero input channels": (T + ["--set", "model.overrides.in_chans=0"], "in_chans=0 must be >= 1"),
    "train: mean/std for the wrong channel count": (T + ["--data.mean", "[0.5]", "--data.std", "[0.5]"],
                                                    "data.mean/std have 1 values but the model takes 3 channel(s)"),
    "train: missing data root": (T + ["--data.dataset", "folder", "--data.root", "IN/nope"], "IN/nope/train: missing"),
    "train: missing config file": (T + ["--config", "IN/nope.yaml"], "IN/nope.yaml: config file not found"),
    "train: missing init weights": (T + ["--model.init", "IN/nope.safetensors"], "IN/nope.safetensors: no such"),
    "train: missing resume path": (T + ["--resume", "IN/nope"], "IN/nope: no training state to resume from"),
    "train: unknown key": (T + ["--set", "opt.lrr=1"], "did you mean 'lr'?"),
    "train: broken config file": (T + ["--config", "IN/broken.yaml"], "IN/broken.yaml: cannot parse config"),
    "train: infinite lr": (T + ["--opt.lr", "inf"], "opt.lr is NaN or infinite"),
    "train: infinite batch size": (T + ["--data.batch_size", ".inf"], "data.batch_size=inf must be an integer"),
    "train: NaN epochs": (T + ["--opt.epochs", ".nan"], "opt.epochs=nan must be an integer"),
    "train: fractional kernel size": (T + ["--set", "model.overrides.kernel_size=2.5"],
                                      "ArchConfig.kernel_size=2.5 must be a whole number"),
    "train: fractional channel count": (T + ["--set", "model.overrides.dims=[8.5,16,32,64]"],
                                        "ArchConfig.dims=[8.5, 16, 32, 64] must be a list of whole numbers"),
    "train: depths that are not a list": (T + ["--set", "model.overrides.depths=oops"],
                                          "ArchConfig.depths='oops' must be a list of whole numbers"),
    "train: seed beyond 64 bits": (T + ["--runtime.seed", "99999999999999999999999"], "must be in [0, 2**63)"),
    "train: run name too long": (T + ["--runtime.run_name", "x" * 300], "use a name of at most 200 bytes"),
    "train: preset that is a list": (["train", "--config", "IN/preset_list.yaml", "--print-config"],
                                     "unknown preset ['small']"),
    "train: config that is not UTF-8": (T + ["--config", "IN/latin1.yaml"], "IN/latin1.yaml: cannot parse config (not UTF-8"),
    "train: out dir under a file": (T + ["--runtime.out", "IN/afile"], "IN/afile"),
    "train: NaN in the normalisation": (T + ["--data.mean", "[0.5,nan,0.5]", "--data.std", "[1,1,1]"],
                                        "data.mean is NaN or infinite"),
    "train: init weights for another architecture": (T + ["--model.init", "IN/other_arch.safetensors"],
                                                     "IN/other_arch.safetensors: parameter stem.conv.weight has shape"),
    # eval
    "eval: missing checkpoint": (["eval", "IN/nope.safetensors", "--dataset", "synthetic"], "IN/nope.safetensors: no such"),
    "eval: batch size 0": (["eval", "IN/model.safetensors", "--dataset", "synthetic", "--batch-size", "0"],
                           "--batch-size 0 must be >= 1"),
    "eval: folder without root": (["eval", "IN/model.safetensors"], "--dataset folder needs --data-root"),
    "eval: missing data root": (["eval", "IN/model.safetensors", "--data-root", "IN/nope"], "IN/nope: image folder not found"),
    "eval: negative limit": (["eval", "IN/model.safetensors", "--dataset", "synthetic", "--limit", "-5"],
                             "--limit -5 must be >= 0"),
    "eval: negative workers": (["eval", "IN/model.safetensors", "--dataset", "synthetic", "--workers", "-1"],
                               "--workers -1 must be >= 0"),
    "eval: confusion figure under a file": (["eval", "IN/model.safetensors", "--dataset", "synthetic",
                                             "--confusion", "IN/afile/cm.png"], "IN/afile is a file, not a directory"),
    "eval: int8 without calibration images": (["eval", "IN/model.safetensors", "--dataset", "synthetic",
                                               "--precision", "fp32,int8"], "--precision int8 needs --calibration"),
    "eval: unknown precision": (["eval", "IN/model.safetensors", "--dataset", "synthetic", "--precision", "fp8"],
                                "--precision='fp8' is not valid"),
    "eval: class count mismatch": (["eval", "IN/model.safetensors", "--dataset", "synthetic"],
                                   "the model has 4 classes but the dataset has 10"),
    "eval: unknown model for foreign weights": (["eval", "IN/timm.safetensors", "--model", "convnext_tny",
                                                 "--dataset", "synthetic"], "did you mean convnext_tiny"),
    # predict
    "predict: missing checkpoint": (["predict", "IN/nope.safetensors", "IN/x.png"], "IN/nope.safetensors: no such"),
    "predict: missing images": (["predict", "IN/model.safetensors", "IN/nope.png"], "no images to classify"),
    "predict: batch size 0": (["predict", "IN/model.safetensors", "IN/x.png", "--batch-size", "0"],
                              "--batch-size 0 must be >= 1"),
    "predict: topk 0": (["predict", "IN/model.safetensors", "IN/x.png", "--topk", "0"], "--topk 0 must be >= 1"),
    "predict: foreign weights without --model": (["predict", "IN/timm.safetensors", "IN/x.png"],
                                                 "pass --model NAME"),
    "predict: unknown model": (["predict", "IN/timm.safetensors", "IN/x.png", "--model", "convnext_tny"],
                               "did you mean convnext_tiny"),
    "predict: unknown device": (["predict", "IN/model.safetensors", "IN/x.png", "--device", "banana"],
                                "device 'banana' is not valid; use auto, cpu, cuda or cuda:N"),
    # export
    "export: missing checkpoint": (["export", "IN/nope.safetensors", "-o", "OUT/m.onnx"], "IN/nope.safetensors: no such"),
    "export: tolerance 0": (["export", "IN/model.safetensors", "--tolerance", "0", "-o", "OUT/m.onnx"],
                            "--tolerance 0.0 must be a finite number > 0"),
    "export: NaN tolerance (would verify nothing)": (["export", "IN/model.safetensors", "--tolerance", "nan",
                                                      "-o", "OUT/m.onnx"], "--tolerance nan must be a finite number"),
    "export: over its own checkpoint": (["export", "IN/model.safetensors", "-f", "torchscript", "-o",
                                         "IN/model.safetensors", "--force"], "is the checkpoint being exported"),
    "export: output under a file": (["export", "IN/model.safetensors", "-o", "IN/afile/m.onnx"],
                                    "IN/afile is a file, not a directory"),
    "export: wrong suffix": (["export", "IN/model.safetensors", "-o", "OUT/m.pt"], "should end in .onnx"),
    "export: bf16 ONNX": (["export", "IN/model.safetensors", "--precision", "bf16", "-o", "OUT/m.onnx"],
                          "ONNX has no bf16 convolution; export --precision fp16"),
    "export: bf16 OpenVINO IR": (["export", "IN/model.safetensors", "-f", "openvino", "--precision", "bf16",
                                  "-o", "OUT/m.xml"], "chooses bf16 at run time on CPUs"),
    "export: opset beyond ONNX": (["export", "IN/model.safetensors", "--opset", "99", "-o", "OUT/m.onnx"],
                                  "--opset 99 is not an ONNX opset this installation knows"),
    "export: opset the exporter cannot write": (["export", "IN/model.safetensors", "--opset", "1", "-o", "OUT/m.onnx"],
                                                "--opset 1: torch's ONNX exporter"),
    "export: opset for torchscript": (["export", "IN/model.safetensors", "-f", "torchscript", "--opset", "18",
                                       "-o", "OUT/m.pt"], "--opset applies to --format onnx only"),
    "export: would overwrite": (["export", "IN/model.safetensors", "-o", "IN/exists.onnx"],
                                "IN/exists.onnx exists; pass --force"),
    # convert
    "convert: missing source": (["convert", "IN/nope.pth", "OUT/x.safetensors", "--to", "ours"], "IN/nope.pth: no such"),
    "convert: would overwrite": (["convert", "IN/model.safetensors", "IN/exists.pth", "--to", "official"],
                                 "IN/exists.pth exists; pass --force"),
    "convert: unknown model": (["convert", "IN/timm.safetensors", "OUT/x.pth", "--to", "official", "--model",
                                "convnext_tny"], "did you mean convnext_tiny"),
    "convert: unknown file type": (["convert", "IN/model.safetensors", "OUT/x.txt", "--to", "timm"],
                                   "unknown weights file type '.txt'"),
    # benchmark
    "benchmark: unknown model": (["benchmark", "convnext_tny", "--peers"], "did you mean convnext_tiny"),
    "benchmark: size below stride": (["benchmark", "convnext_atto", "--size", "16"], "below the models' total stride 32"),
    "benchmark: zero threads": (["benchmark", "convnext_atto", "--peers", "--threads", "0"], "--threads 0 must be >= 1"),
    "benchmark: unknown device": (["benchmark", "convnext_atto", "--peers", "--device", "tpu"],
                                  "--device 'tpu' is not valid"),
    "benchmark: output is a directory": (["benchmark", "convnext_atto", "--peers", "-o", "IN"], "is a directory"),
    "benchmark: batch size 0": (["benchmark", "convnext_atto", "--batch-sizes", "0"], "must be positive integers"),
    # info / plot / study
    "info: unknown model": (["info", "convnext_tny"], "did you mean convnext_tiny"),
    "info: missing checkpoint": (["info", "IN/nope.safetensors"], "IN/nope.safetensors: no such checkpoint file"),
    "info: size below stride": (["info", "convnext_atto", "--size", "16"], "smaller than the network's total stride 32"),
    "info: tensors that do not fit the metadata": (["info", "IN/tampered.safetensors"],
                                                   "its metadata describes one architecture but the file holds"),
    "plot: missing run dir": (["plot", "IN/nope"], "IN/nope: no such metrics file"),
    "plot: nothing to plot": (["plot"], "pass a run directory"),
    "plot: size below stride": (["plot", "--roadmap", "--size", "16"], "smaller than the networks' total stride 32"),
    "study: zero seeds": (["study", "roadmap", "--seeds", "0"], "--seeds 0: a study needs at least one seed"),
    "study: unknown step": (["study", "roadmap", "--steps", "roadmap_kernel8"], "unknown roadmap step(s) ['roadmap_kernel8']"),
    "study: image below stride": (["study", "roadmap", "--budget", "micro", "--image-size", "16"],
                                  "image_size=16 is below the networks' total stride 32"),
    "study: batch size 0": (["study", "roadmap", "--budget", "micro", "--batch-size", "0"], "must all be positive"),
    "study: missing data": (["study", "roadmap", "--budget", "micro", "--data-root", "IN/nope"],
                            "IN/nope: Fashion-MNIST directory not found"),
    "study: a GPU this machine lacks": (["study", "roadmap", "--budget", "micro", "--steps", "resnet50", "--device",
                                         "cuda:3", "--out", "OUT/st"], "cuda:3"),
    "study: infinite width": (["study", "roadmap", "--budget", "micro", "--width-mult", "inf"],
                              "must all be positive (and finite)"),
    "quantize: too few calibration images": (["quantize", "IN/model.safetensors", "--calibration", "IN",
                                              "--images", "8", "-o", "OUT/q.safetensors"], "need at least 32"),
    "quantize: output not safetensors": (["quantize", "IN/model.safetensors", "--calibration", "IN",
                                          "-o", "OUT/q.pt"], "models are .safetensors files"),
    "quantize: would overwrite": (["quantize", "IN/model.safetensors", "--calibration", "IN",
                                   "-o", "IN/exists.onnx"], "IN/exists.onnx exists; pass --force"),
    # usage errors (argparse) are one line too, with a close match where there is one
    "usage: misspelt command": (["trian"], "invalid choice: 'trian'"),
    "usage: non-numeric flag": (["predict", "IN/model.safetensors", "IN/x.png", "--topk", "abc"],
                                "invalid int value: 'abc'"),
    "usage: misspelt choice": (["benchmark", "convnext_atto", "--peers", "timm_convnext_tny"],
                               "did you mean timm_convnext_tiny?"),
    # list / roadmap
    "list: nothing matches": (["list", "resnet9000*"], "no model matches 'resnet9000*'"),
    "list: near miss": (["list", "convnext_tny"], "did you mean convnext_tiny"),
    "plot: results naming no roadmap step": (["plot", "--roadmap", "IN/not_a_study.json", "-o", "OUT/r.png"],
                                             "name none of the roadmap's steps"),
    "roadmap: size below stride": (["roadmap", "--size", "16"], "smaller than the networks' total stride 32"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, inputs, tmp_path, capsys, monkeypatch):
    argv, says = case
    sub = lambda s: s.replace("IN", str(inputs)).replace("OUT", str(tmp_path / "out"))  # noqa: E731
    argv, says = [sub(a) for a in argv], sub(says)
    monkeypatch.chdir(tmp_path)  # a default output path would land here
    before_in, before_here = snapshot(inputs), snapshot(tmp_path)
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2, err
    line = one_line(err)
    prefix = f"convnext {argv[0]}: error: " if argv[0] in COMMANDS else "convnext: error: "
    assert line.startswith(prefix) and says in line, line
    assert out == ""
    assert snapshot(inputs) == before_in and snapshot(tmp_path) == before_here


def test_a_contradicting_model_name_is_reported_not_silently_ignored(inputs, capsys):
    """Our checkpoints carry their architecture; a --model naming another one is ignored, and says so."""
    rc, out, err = run_cli(["predict", str(inputs / "model.safetensors"), str(inputs / "x.png"),
                            "--model", "convnext_tiny", "--topk", "1", "--device", "cpu"], capsys)
    assert rc == 0 and out
    assert one_line(err) == "warning: --model convnext_tiny ignored: model.safetensors carries its architecture " \
                            "(convnext_atto)"


@pytest.mark.slow
def test_bad_input_exit_status_of_the_real_program(tmp_path):
    r = run_convnext(train_argv(tmp_path / "out", "--opt.lr", "-1"))
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / "out").exists()
    assert one_line(r.stderr) == "convnext train: error: opt.lr=-1.0 must be > 0"


def test_python_api_rejects_impossible_models_and_inputs():
    with pytest.raises(ValueError, match="did you mean convnext_tiny"):
        create_model("convnext_tny")
    for bad, says in [({"in_chans": 0}, "in_chans=0 must be >= 1"), ({"kernel_size": 4}, "positive odd number"),
                      ({"depths": (1, 1, 0, 1)}, "must all be >= 1"), ({"num_classes": -1}, "num_classes=-1")]:
        with pytest.raises(ValueError, match=says):
            create_model("convnext_atto", **bad)
    with pytest.raises(UsageError, match="must be >= 1"):
        from convnext.train import preset

        preset("small").replace({"data.batch_size": 0})


# ==== 6. determinism =============================================================================

def test_same_seed_and_config_give_bitwise_identical_runs(reference, tmp_path, capsys):
    rc, _, err = run_cli(train_argv(tmp_path / "again", *FULL_AUG), capsys)
    assert rc == 0, err
    assert_same_as_reference(tmp_path / "again" / "run", reference)
    # and the run is sensitive to the seed (so equality above is not vacuous)
    rc, _, _ = run_cli(train_argv(tmp_path / "seed1", *FULL_AUG, "--runtime.seed", "1"), capsys)
    other = load_file(str(tmp_path / "seed1" / "run" / "last.safetensors"))
    assert rc == 0 and not torch.equal(other["head.fc.weight"], reference["weights"]["head.fc.weight"])
    losses = [r["loss"] for r in reference["records"] if r["type"] == "step"]
    assert len(losses) == TOTAL_STEPS and all(np.isfinite(losses))
    summary = json.loads(json.dumps(reference["records"][-1]))
    assert summary["type"] == "epoch" and summary["step"] == TOTAL_STEPS
