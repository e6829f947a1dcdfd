import json
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


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "convnext", "list", "convnext_t*"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("convnext_tiny")
    bad = subprocess.run([sys.executable, "-m", "convnext", "list", "nothing*"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no model matches" in bad.stderr
