"""Hostile and damaged weight files (issue 7, item 1): refused with one clear line, nothing executed,
nothing written."""

from __future__ import annotations

import collections
import io
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch

import convnext
from convnext.checkpoint import export_weights, load_model, save_model
from convnext.cli import main as cli_main
from convnext.errors import CheckpointError
from convnext.weights import load_weights

SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
SRC = Path(convnext.__file__).parent


class _CreatesFile:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a hostile pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_files(tmp_path: Path) -> tuple[list[Path], Path]:
    marker = tmp_path / "pwned"
    payload = {"stem.conv.weight": torch.zeros(1), "evil": _CreatesFile(marker)}
    zipped = tmp_path / "hostile.pth"
    torch.save(payload, zipped)  # the modern zip container
    raw = tmp_path / "hostile_raw.bin"
    raw.write_bytes(pickle.dumps(payload, protocol=2))  # a bare legacy pickle
    return [zipped, raw], marker


def test_the_crafted_pickle_really_runs_code_when_unpickled_plainly(tmp_path):
    # Guard for the tests below: the payload is live, so "no marker" there means "refused", not "inert".
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_CreatesFile(marker), protocol=2)).close()
    assert marker.exists()


def test_hostile_pickle_is_refused_everywhere_and_runs_nothing(tmp_path, capsys):
    files, marker = _hostile_files(tmp_path)
    for path in files:
        model = convnext.create_model("convnext_atto", **SMALL)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError) as e:
            load_weights(model, path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: refused: unpickling this file would") and "\n" not in msg
        assert "weights_only=True" in msg and "safetensors" in msg
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
        with pytest.raises(CheckpointError, match="refused"):
            convnext.create_model("convnext_atto", pretrained=path)
        with pytest.raises(CheckpointError, match="refused"):
            load_model(path, model_name="convnext_atto")
        dst = tmp_path / "out.safetensors"
        assert cli_main(["convert", str(path), str(dst), "--to", "ours", "--model", "convnext_atto"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convnext convert: error:") and "refused" in err and err.count("\n") == 1
        assert not dst.exists()
        assert not marker.exists()
    # the zip container names what it wanted to call
    with pytest.raises(CheckpointError, match=r"would import and call (io|builtins)\.open"):
        load_weights(convnext.create_model("convnext_atto", **SMALL), files[0])


def test_no_code_path_unpickles_without_weights_only():
    # Every torch.load in the package passes weights_only=True; no plain pickle.load(s) anywhere.
    calls = 0
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.index("\n", text.index(")", m.start()))]
            assert "weights_only=True" in call, f"{path}: {call}"
            calls += 1
    assert calls >= 1  # the scan saw the weights reader


@pytest.fixture
def good_files(tmp_path):
    model = convnext.create_model("convnext_atto", **SMALL)
    return model, export_weights(model, tmp_path / "good.pth", layout="timm"), \
        save_model(model, tmp_path / "good.safetensors")


def _one_clear_line(path, msg, *needles):
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_zero_byte_truncated_and_corrupt_files(tmp_path, good_files):
    model, pth, st = good_files
    cases = []
    for suffix in (".pth", ".safetensors"):
        empty = tmp_path / f"empty{suffix}"
        empty.write_bytes(b"")
        cases.append((empty, "file is empty (0 bytes)"))
    half = tmp_path / "half.pth"
    half.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    cases.append((half, "not a readable PyTorch checkpoint"))
    half_st = tmp_path / "half.safetensors"
    half_st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    cases.append((half_st, "not a readable safetensors file"))
    # corrupted header: the JSON header scrambled, and a header length pointing past the end of the file
    data = bytearray(st.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    scrambled = tmp_path / "scrambled.safetensors"
    scrambled.write_bytes(bytes(data[:8]) + b"\xff" * header_len + bytes(data[8 + header_len:]))
    cases.append((scrambled, "not a readable safetensors file"))
    too_long = tmp_path / "too_long.safetensors"
    too_long.write_bytes(struct.pack("<Q", 10 ** 12) + bytes(data[8:]))
    cases.append((too_long, "not a readable safetensors file"))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a checkpoint at all\n" * 10)
    cases.append((garbage, "not a readable PyTorch checkpoint"))
    noise = tmp_path / "noise.pt"  # random bytes trip the safe unpickler too: damage, not "hostile"
    noise.write_bytes(bytes([0x13]) + torch.randint(0, 256, (4095,), generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.uint8).numpy().tobytes())
    cases.append((noise, "not a readable PyTorch checkpoint"))
    for path, problem in cases:
        with pytest.raises(CheckpointError) as e:
            load_weights(model, path)
        _one_clear_line(path, str(e.value), problem, "re-download or re-export")
        assert "weights_only` set to `False" not in str(e.value)  # never pass on torch's unsafe advice
        with pytest.raises(CheckpointError, match=re.escape(problem)):
            load_model(path, model_name="convnext_atto")


def test_files_without_weights_or_of_another_kind(tmp_path, good_files):
    model, _, _ = good_files
    not_sd = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, not_sd)
    with pytest.raises(CheckpointError) as e:
        load_weights(model, not_sd)
    _one_clear_line(not_sd, str(e.value), "holds no state dict of tensors (found ['epoch', 'optimizer'])")
    import torchvision
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), resnet)
    with pytest.raises(CheckpointError) as e:
        load_weights(model, resnet)
    _one_clear_line(resnet, str(e.value), "no ConvNeXt layout convnext knows (first keys: conv1.weight")


def test_checkpoint_for_another_architecture_one_line_in_the_cli(tmp_path, capsys):
    tiny_like = convnext.create_model("convnext_femto", depths=(1, 1, 1, 1))
    path = export_weights(tiny_like, tmp_path / "femto.safetensors", layout="hf")
    with pytest.raises(CheckpointError) as e:
        load_weights(convnext.create_model("convnext_atto", depths=(1, 1, 1, 1)), path)
    _one_clear_line(path, str(e.value), "parameter stem.conv.weight has shape (48, 3, 4, 4) in the checkpoint but "
                    "(40, 3, 4, 4) in the model (hf layout)", "build the model the weights were made for")
    dst = tmp_path / "x.pth"
    dst.write_bytes(b"previous content")
    assert cli_main(["convert", str(path), str(dst), "--to", "timm", "--model", "convnext_atto", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parameter stem.conv.weight has shape (48, 3, 4, 4)" in err
    assert dst.read_bytes() == b"previous content"  # a failed conversion loses nothing


def test_weights_only_still_reads_ordinary_checkpoints(tmp_path):
    # the protection must not cost legitimate files: nested containers, non-tensor metadata, buffers
    model = convnext.create_model("convnext_atto", **SMALL)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "epoch": 7, "args": {"lr": 4e-3, "name": "x"}}, buf)
    path = tmp_path / "official_style.pth"
    path.write_bytes(buf.getvalue())
    again = convnext.create_model("convnext_atto", **SMALL)
    assert load_weights(again, path).layout == "ours"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_refused_or_damaged_is_decided_from_the_file_not_from_torchs_wording(tmp_path, monkeypatch, good_files):
    # torch rewords its weights-only errors between releases; the verdict must not move with it
    model, pth, _ = good_files
    (zipped, raw), marker = _hostile_files(tmp_path)
    legacy = tmp_path / "hostile_legacy.pt"  # the pre-zip torch.save format: five pickles, then storages
    torch.save({"stem.conv.weight": torch.zeros(1), "evil": _CreatesFile(marker)}, legacy,
               _use_new_zipfile_serialization=False)
    memoized = tmp_path / "protocol4.pkl"  # STACK_GLOBAL; the second "collections" is a memo read
    memoized.write_bytes(pickle.dumps([collections.OrderedDict(), collections.Counter(), _CreatesFile(marker)],
                                      protocol=4))
    half = tmp_path / "half.pth"
    half.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    cut = tmp_path / "cut_hostile.bin"  # a hostile stream cut short is damage: it is no pickle at all
    cut.write_bytes(raw.read_bytes()[:-3])

    def reworded(*args, **kwargs):
        assert kwargs.get("weights_only") is True
        raise pickle.UnpicklingError("something reworded")

    monkeypatch.setattr(torch, "load", reworded)
    # each named by the first global the weights-only unpickler would not build; a tensor pickled with
    # plain pickle (the bare file) goes through torch.storage._load_from_bytes, itself an unsafe load
    for path, name in ((zipped, "io.open"), (raw, "torch.storage._load_from_bytes"), (legacy, "io.open"),
                       (memoized, "io.open")):
        with pytest.raises(CheckpointError) as e:
            load_weights(model, path)
        _one_clear_line(path, str(e.value), f"{path}: refused: unpickling this file would import and call {name};",
                        "weights_only=True")
    for path in (half, garbage, cut):
        with pytest.raises(CheckpointError) as e:
            load_weights(model, path)
        _one_clear_line(path, str(e.value), "not a readable PyTorch checkpoint", "truncated or corrupt")
        assert "reworded" not in str(e.value)
    # a sound pickle of tensors that the weights-only unpickler still rejects is not called damaged
    with pytest.raises(CheckpointError) as e:
        load_weights(model, pth)
    _one_clear_line(pth, str(e.value), "refused: unpickling this file would use pickle instructions beyond")
    # other failures over a sound pickle are damage elsewhere (a tensor record); torch's advice to turn
    # weights_only off is never passed on
    for text, shown in (("record data/0 is cut short", "record data/0 is cut short"),
                        ("reload with weights_only=False", "RuntimeError")):
        monkeypatch.setattr(torch, "load", lambda *a, _t=text, **k: (_ for _ in ()).throw(RuntimeError(_t)))
        with pytest.raises(CheckpointError) as e:
            load_weights(model, pth)
        _one_clear_line(pth, str(e.value), f"not a readable PyTorch checkpoint ({shown})", "re-download")
        assert "weights_only=False" not in str(e.value)
    assert not marker.exists()
