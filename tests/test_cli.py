import json
import shlex
import subprocess
import sys

import pytest

from convnext.cli import COMMANDS, main


def test_roadmap_json(capsys):
    assert main(["roadmap", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "resnet50" and rows[0]["params"] == 25_557_032
    assert rows[-1]["params"] == 28_589_128
    assert {"name", "change", "params", "gmacs", "paper_gflops", "paper_top1"} <= set(rows[0])


def test_roadmap_markdown_and_text(capsys):
    assert main(["roadmap", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| step |") and out.count("\n") == 2 + 17
    assert main(["roadmap"]) == 0
    assert "roadmap_separate_downsampling" in capsys.readouterr().out


def test_roadmap_bad_size_exits_2(capsys):
    assert main(["roadmap", "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "total stride 32" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0


def test_debug_before_or_after_the_command_shows_the_traceback(tmp_path, capsys):
    """An error is one line and exit 2; with --debug, before the command or after it (where a user adds it to the
    line that failed, as the error's hint says), the exception itself comes through with its traceback."""
    missing = str(tmp_path / "none.safetensors")
    assert main(["info", missing]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "none.safetensors" in err
    for argv in (["--debug", "info", missing], ["info", missing, "--debug"]):
        with pytest.raises(FileNotFoundError, match="none.safetensors"):
            main(argv)
    assert main(["list", "convnext_t*", "--debug"]) == 0  # harmless where nothing fails


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "convnext", "list", "convnext_t*"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("convnext_tiny")
    bad = subprocess.run([sys.executable, "-m", "convnext", "list", "nothing*"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no model matches" in bad.stderr


def _piped_into_head(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python -m convnext ARGS 2>&1 | head -1` with the pipeline's exit status taken from convnext."""
    cmd = shlex.join([sys.executable, "-m", "convnext", *args]) + " 2>&1 | head -1"
    return subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_listing_into_a_closed_pipe_exits_0(tmp_path):
    done = _piped_into_head(["list"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("convnext_atto") and done.stdout.count("\n") == 1 and not done.stderr


def test_a_closed_pipe_never_stops_training(tmp_path):
    # the reader of the run's output leaves after the first line; the run must finish and save
    args = ["train", "--preset", "small", "--model.name", "convnext_atto",
            "--set", "model.overrides.depths=[1,1,1,1]", "--set", "model.overrides.dims=[8,16,32,64]",
            "--data.dataset", "synthetic", "--data.synthetic_samples", "64", "--data.image_size", "32",
            "--data.batch_size", "8", "--data.workers", "0", "--opt.epochs", "2", "--runtime.out", str(tmp_path),
            "--runtime.run_name", "run", "--runtime.tensorboard", "false", "--runtime.plots", "false",
            "--runtime.log_every", "1"]
    done = _piped_into_head(args, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "run" / "last.safetensors").is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]


def test_top_level_help_and_an_unknown_command_do_not_load_torch():
    # every command's module imports torch (seconds); `convnext --help` needs none of them
    code = ("import sys\nfrom convnext.cli import main\n"
            "for argv in (['--help'], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print('exit', e.code)\n"
            "print('torch loaded:', 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "exit 0" in r.stdout and "exit 2" in r.stdout, r.stdout + r.stderr
    assert "torch loaded: False" in r.stdout
    assert "train" in r.stdout and "list model names" in r.stdout  # the help still lists every command
    assert "invalid choice: 'trian'" in r.stderr and "did you mean train?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # a usage error is one line, like every other error


@pytest.mark.parametrize("closed", [">&-", "2>&-"])
def test_a_closed_stream_never_stops_a_command(tmp_path, closed):
    """Started with stdout or stderr closed (Python then has no sys.stdout/sys.stderr at all): a listing
    still exits 0 and a training run still finishes and saves."""
    listing = subprocess.run(["bash", "-c", shlex.join([sys.executable, "-m", "convnext", "list"]) + f" {closed}"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    args = ["train", "--preset", "small", "--model.name", "convnext_atto", "--runtime.device", "cpu",
            "--set", "model.overrides.depths=[1,1,1,1]", "--set", "model.overrides.dims=[8,16,32,64]",
            "--data.dataset", "synthetic", "--data.synthetic_samples", "32", "--data.image_size", "32",
            "--data.batch_size", "8", "--data.workers", "0", "--opt.epochs", "1", "--runtime.out", str(tmp_path),
            "--runtime.run_name", "run", "--runtime.tensorboard", "false", "--runtime.plots", "false"]
    run = subprocess.run(["bash", "-c", shlex.join([sys.executable, "-m", "convnext", *args]) + f" {closed}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "last.safetensors").is_file()


def test_every_train_config_flag_is_described_and_help_shows_no_empty_defaults(capsys):
    import dataclasses
    import typing

    from convnext.train.config import TrainConfig, field_help

    docs = field_help()
    keys = [f"{s.name}.{f.name}" for s in dataclasses.fields(TrainConfig)
            for f in dataclasses.fields(typing.get_type_hints(TrainConfig)[s.name])]
    assert len(keys) > 50 and [k for k in keys if not docs.get(k)] == []
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--opt.lr V peak learning rate" in text and "(paper preset: 0.004)" in text
