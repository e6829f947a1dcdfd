import json

import pytest

import convnext
from convnext.cli import main
from convnext.info import describe, format_report

from infer_fixtures import CLASSES, checkpoint  # noqa: F401


def test_convnext_tiny_stages_match_hand_count_and_timm():
    r = describe("convnext_tiny")
    assert r.params == 28_589_128 and r.input_size == (3, 224, 224)
    assert [s.name for s in r.stages] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert [s.blocks for s in r.stages[1:5]] == [3, 3, 9, 3]
    assert [s.channels for s in r.stages] == [96, 96, 192, 384, 768, 1000]
    assert [s.resolution for s in r.stages[:5]] == [(56, 56), (56, 56), (28, 28), (14, 14), (7, 7)]
    # stage 1 by hand: 3 blocks x (7x7 depthwise + two 1x1 convs 96 <-> 384) on a 56x56 map
    hw = 56 * 56
    assert r.stages[1].gmacs == pytest.approx(3 * hw * (96 * 49 + 2 * 96 * 384) / 1e9, rel=1e-9)
    # depthwise share by hand over all stages
    dw = 49 * sum(h * h * c * d for h, c, d in [(56, 96, 3), (28, 192, 3), (14, 384, 9), (7, 768, 3)])
    assert r.breakdown["depthwise conv"][0] == pytest.approx(dw / 1e9, rel=1e-9)
    assert r.breakdown["head"][0] == pytest.approx(768 * 1000 / 1e9)
    assert sum(s.gmacs for s in r.stages) == pytest.approx(r.gmacs, rel=1e-9)
    assert sum(g for g, _ in r.breakdown.values()) == pytest.approx(r.gmacs, rel=1e-9)
    assert r.gmacs == pytest.approx(4.456, abs=1e-3)  # paper: 4.5 GFLOPs (counted as MACs)
    # per-stage parameters equal timm's convnext_tiny stages (downsample counted in the stage, as both do)
    timm = pytest.importorskip("timm")
    ref = timm.create_model("convnext_tiny", pretrained=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert [s.params for s in r.stages] == [count(ref.stem)] + [count(s) for s in ref.stages] + [count(ref.head)]


def test_resnet50_roadmap_step_breakdown():
    r = describe("resnet50")
    assert r.params == 25_557_032
    assert r.stages[0].resolution == (56, 56) and r.stages[0].channels == 64  # 7x7 s2 conv + maxpool
    assert set(r.breakdown) == {"stem", "dense spatial conv", "pointwise (1x1) conv", "shortcut projection", "head"}
    # the 3x3 convs: 3x3 x width^2 per position, widths 64..512, stride-2 in the first block of stages 2-4
    spatial = 9 * sum(w * w * (hw * hw) * n for w, hw, n in
                      [(64, 56, 3), (128, 28, 4), (256, 14, 6), (512, 7, 3)])
    assert r.breakdown["dense spatial conv"][0] == pytest.approx(spatial / 1e9, rel=1e-9)


@pytest.mark.parametrize("name", convnext.list_models())
def test_every_registered_model_is_described(name):
    r = describe(name, size=64)
    assert r.params > 0 and r.stages[-1].channels == 1000
    assert sum(s.gmacs for s in r.stages) == pytest.approx(r.gmacs, rel=1e-6)
    assert sum(g for g, _ in r.breakdown.values()) == pytest.approx(r.gmacs, rel=1e-6)
    assert "where the FLOPs go" in format_report(r)


def test_odd_input_size_resolutions():
    r = describe("convnext_atto", size=225)
    assert [s.resolution for s in r.stages[:5]] == [(56, 56), (56, 56), (28, 28), (14, 14), (7, 7)]
    r = describe("convnext_isotropic_small", size=100)
    assert [s.resolution for s in r.stages[:2]] == [(6, 6), (6, 6)] and len(r.stages) == 3


def test_info_on_trained_checkpoint_json(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "convnext_atto" and doc["input_size"] == [1, 32, 32]  # size from the checkpoint
    assert doc["class_names"] == CLASSES and doc["preprocess"]["channels"] == 1
    assert [s["resolution"] for s in doc["stages"]][:5] == [[8, 8], [8, 8], [4, 4], [2, 2], [1, 1]]
    assert doc["params"] == sum(s["params"] for s in doc["stages"])
    assert abs(sum(v["share"] for v in doc["flops_breakdown"].values()) - 1) < 1e-9
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "classes: T-shirt/top, Trouser" in out and "preprocess: 32px" in out
    # 1.3 MMACs would print as 0.001 GMACs: small models are shown in MMACs
    mmacs = doc["gmacs"] * 1e3
    assert f"MMACs: {mmacs:.3f}" in out and "GMACs" not in out


def test_info_errors_exit_2(tmp_path, capsys):
    assert main(["info", "convnext_tinny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean convnext_tiny" in err
    assert main(["info", "convnext_tiny", "--size", "16"]) == 2
    assert "total stride 32" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_info_and_predict_on_foreign_timm_file_with_model_flag(tmp_path, capsys):
    from PIL import Image
    from skimage import data

    from convnext.checkpoint import export_weights

    model = convnext.create_model("convnext_atto", num_classes=7).eval()
    path = export_weights(model, tmp_path / "atto_timm.pth", layout="timm")
    assert main(["info", str(path)]) == 2  # no metadata: the architecture must be named
    assert "--model" in capsys.readouterr().err
    assert main(["info", str(path), "--model", "convnext_atto", "--json", "--size", "64"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["params"] == convnext.count_params(model) and doc["stages"][-1]["channels"] == 7
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    assert main(["predict", str(path), str(tmp_path / "coffee.png"), "--model", "convnext_atto", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    assert [p["class"] for p in preds] == [f"class_{p['index']}" for p in preds] and len(preds) == 5
