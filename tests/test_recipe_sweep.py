"""benchmarks/recipes/sweep.py's choice of the one run read on the test split, benchmarks/recipes/ensemble_probe.py's
scores, benchmarks/study/plateau_check.py's comparison, benchmarks/study/ablation.py's runs and comparison, and
benchmarks/gpu_check.sh's dry run on the CPU (its fmnist, study and roadmap steps, the ones a GPU session trains with).

The rule fixed before a sweep runs: among finished runs, the highest held-out top-1 of a run's best checkpoint
(model or EMA, whichever best.safetensors holds); the test split is read for that run alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import benchmark_script, run_cli, run_script

ROOT = Path(__file__).resolve().parents[1]


def _sweep():
    return benchmark_script("recipes/sweep.py")


def _run_dir(root: Path, name: str, epochs: list[tuple[float, float | None]], done: bool = True) -> None:
    d = root / name
    d.mkdir(parents=True)
    lines = [{"type": "step", "step": 1, "img_per_s": 100.0}]
    lines += [{"type": "epoch", "epoch": i, "val_top1": m, "ema_top1": e} for i, (m, e) in enumerate(epochs)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if done:
        (d / "done").write_text("cmd\n")


def _fake_eval(monkeypatch, sweep, top1: float, shirt: float) -> list[list[str]]:
    """Every `convnext eval --json` the sweep runs answers ``top1`` (Shirt ``shirt``); returns the commands."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        report = {"top1": top1, "count": 10000, "per_class": [{"class": "Shirt", "top1": shirt}]}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(report), stderr="")

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    return calls


def test_best_heldout_is_the_best_of_model_and_ema_over_all_epochs(tmp_path):
    sweep = _sweep()
    _run_dir(tmp_path, "a", [(90.0, 91.5), (92.25, None), (91.0, 92.0)])
    assert sweep.best_heldout(tmp_path / "a") == 92.25  # a model epoch beats every EMA epoch
    _run_dir(tmp_path, "b", [(90.0, 93.0)])
    assert sweep.best_heldout(tmp_path / "b") == 93.0  # the EMA's
    _run_dir(tmp_path, "c", [(99.0, 99.0)], done=False)
    assert sweep.best_heldout(tmp_path / "c") is None  # unfinished: its best may not be saved as final


def test_run_launches_a_processes_group_under_torchrun_with_one_thread_each(tmp_path, monkeypatch):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "solo", {"r": ["--opt.epochs", "1"]})
    monkeypatch.setitem(sweep.GROUPS, "plain", {"r": ["--opt.epochs", "1"]})
    monkeypatch.setitem(sweep.PROCESSES, "solo", 2)
    calls = []

    def fake_train(cmd, **kw):  # as `convnext train` would: the run's directory
        calls.append((cmd, kw.get("env")))
        (Path(cmd[cmd.index("--runtime.out") + 1]) / cmd[cmd.index("--runtime.run_name") + 1]).mkdir(parents=True)

    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    sweep.run("solo", "r", sweep.GROUPS["solo"]["r"], tmp_path)
    sweep.run("plain", "r", sweep.GROUPS["plain"]["r"], tmp_path)
    (solo, solo_env), (plain, plain_env) = calls
    assert solo[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert solo[7:9] == ["convnext", "train"] and solo_env["OMP_NUM_THREADS"] == "1"
    assert plain[1:4] == ["-m", "convnext", "train"] and plain_env is None
    assert (tmp_path / "solo" / "r" / "done").read_text().startswith(sys.executable + " -m torch.distributed.run")
    sweep.run("solo", "r", [], tmp_path)  # finished: not run again
    assert len(calls) == 2


def test_test_best_reads_the_test_split_once_for_the_chosen_finished_run(tmp_path, monkeypatch):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "g", {"low": [], "high": [], "unfinished": []})
    _run_dir(tmp_path / "g", "low", [(93.0, 93.5)])
    _run_dir(tmp_path / "g", "high", [(93.9, 94.2)])
    _run_dir(tmp_path / "g", "unfinished", [(99.0, 99.0)], done=False)
    calls = _fake_eval(monkeypatch, sweep, 93.8, 81.0)
    save = tmp_path / "g.json"
    save.write_text(json.dumps({"group": "g", "runs": []}))
    record = sweep.test_best("g", tmp_path, save, "cpu")
    assert len(calls) == 1  # one evaluation, of one checkpoint
    assert calls[0][3:5] == ["eval", str(tmp_path / "g" / "high" / "best.safetensors")]
    assert calls[0][calls[0].index("--dataset") + 1] == "fashion_mnist"
    assert "--split" not in calls[0]  # the dataset's val split: Fashion-MNIST's test images
    assert record["chosen"] == "high" and record["test_top1"] == 93.8
    assert record["heldout_top1"] == {"low": 93.5, "high": 94.2, "unfinished": None}
    saved = json.loads(save.read_text())
    assert saved["group"] == "g" and saved["test"]["chosen"] == "high"  # added to the report, which stays


@pytest.mark.parametrize("flip_heldout, expected", [(94.3, "flip"), (94.1, "none"), (94.2, "none")])
def test_test_best_chooses_flip_tta_on_the_held_out_images_then_reads_the_test_split_once(
        tmp_path, monkeypatch, flip_heldout, expected):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "g", {"only": []})
    _run_dir(tmp_path / "g", "only", [(93.9, 94.2)])
    (tmp_path / "g" / "only" / "config.yaml").write_text("data:\n  holdout: 1000\n  dataset: fashion_mnist\n")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        held, tta = "--holdout" in cmd, cmd[cmd.index("--tta") + 1]
        top1 = (flip_heldout if tta == "flip" else 94.2) if held else 93.5
        report = {"top1": top1, "count": 1000 if held else 10000, "per_class": [{"class": "Shirt", "top1": 80.0}]}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(report), stderr="")

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    record = sweep.test_best("g", tmp_path, None, "cpu", tta="heldout")
    held = [c for c in calls if "--holdout" in c]
    test = [c for c in calls if "--holdout" not in c]
    assert [c[c.index("--holdout") + 1] for c in held] == ["1000", "1000"]  # the run's own held-out images
    assert len(test) == 1 and test[0][test[0].index("--tta") + 1] == expected  # the test split once, after
    assert calls.index(test[0]) == len(calls) - 1
    assert record["tta"] == expected and record["tta_heldout"]["top1"] == {"none": 94.2, "flip": flip_heldout}


def test_test_best_refuses_a_group_with_no_finished_run(tmp_path, monkeypatch):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "g", {"a": []})
    _run_dir(tmp_path / "g", "a", [(90.0, 90.0)], done=False)
    with pytest.raises(SystemExit, match="no finished run"):
        sweep.test_best("g", tmp_path, None, "cpu")


def test_test_last_reads_each_final_runs_last_ema_once_and_refuses_a_validated_run(tmp_path, monkeypatch):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "g", {"final": [*sweep.FINAL], "unfinished": [*sweep.FINAL]})
    for name, done in (("final", True), ("unfinished", False)):
        _run_dir(tmp_path / "g", name, [], done=done)  # no validated epoch
        (tmp_path / "g" / name / "config.yaml").write_text("data:\n  holdout: 0\n")
    calls = _fake_eval(monkeypatch, sweep, 94.1, 80.0)
    record = sweep.test_last("g", tmp_path, None, "cpu")
    assert [c[3:5] for c in calls] == [["eval", str(tmp_path / "g" / "final" / "last_ema.safetensors")]]
    assert "--holdout" not in calls[0] and calls[0][calls[0].index("--tta") + 1] == "none"
    assert record["runs"] == {"final": {"test_top1": 94.1, "test_count": 10000, "test_per_class": {"Shirt": 80.0},
                                        "command": record["runs"]["final"]["command"]}}
    # a run that held images out, or validated while it trained, is not a final run: --test-best is its rule
    (tmp_path / "g" / "final" / "config.yaml").write_text("data:\n  holdout: 10000\n")
    with pytest.raises(SystemExit, match="validated while training"):
        sweep.test_last("g", tmp_path, None, "cpu")
    assert len(calls) == 1


def _plateau_check():
    return benchmark_script("study/plateau_check.py")


def _study(epochs: int, rows: dict[str, dict[int, float]], lr: float = 0.1) -> dict:
    return {"settings": {"budget": {"epochs": epochs, "image_size": 64, "lr": lr}}, "command": f"study --epochs {epochs}",
            "complete": True, "runs_done": sum(map(len, rows.values())), "runs_planned": 4, "wall_time_s": 10.0,
            "steps": [{"name": n, "seeds": sorted(r), "top1": [r[s] for s in sorted(r)],
                       "top1_mean": sum(r.values()) / len(r)} for n, r in rows.items()]}


def test_test_each_reads_every_seeds_best_checkpoint_once_and_refuses_an_unfinished_group(tmp_path, monkeypatch):
    sweep = _sweep()
    monkeypatch.setitem(sweep.GROUPS, "g", {"seed1": [], "seed2": []})
    _run_dir(tmp_path / "g", "seed1", [(93.5, 93.9)])
    _run_dir(tmp_path / "g", "seed2", [(93.1, 93.0)], done=False)
    calls = _fake_eval(monkeypatch, sweep, 93.6, 78.0)
    with pytest.raises(SystemExit, match="unfinished runs in .*: seed2"):
        sweep.test_each("g", tmp_path, None, "cpu")
    assert calls == []  # nothing read before every seed finished
    (tmp_path / "g" / "seed2" / "done").write_text("cmd\n")
    save = tmp_path / "g.json"
    save.write_text(json.dumps({"group": "g", "runs": []}))
    record = sweep.test_each("g", tmp_path, save, "cpu")
    assert [c[3:5] for c in calls] == [["eval", str(tmp_path / "g" / name / "best.safetensors")]
                                       for name in ("seed1", "seed2")]
    assert all("--holdout" not in c and c[c.index("--tta") + 1] == "none" for c in calls)
    assert {name: (r["heldout_top1"], r["test_top1"]) for name, r in record["runs"].items()} == {
        "seed1": (93.9, 93.6), "seed2": (93.1, 93.6)}
    saved = json.loads(save.read_text())
    assert saved["group"] == "g" and set(saved["test"]["runs"]) == {"seed1", "seed2"}


def test_plateau_check_compares_the_seeds_both_budgets_hold(tmp_path):
    check = _plateau_check().check
    study = _study(30, {"resnet50": {0: 90.0, 1: 91.0}, "roadmap_kernel7": {0: 88.0},
                        "roadmap_separate_downsampling": {0: 92.0, 1: 92.4}})
    double = _study(60, {"resnet50": {0: 90.2}, "roadmap_separate_downsampling": {0: 93.0, 1: 93.0}})
    out = check(study, double, 0.3)
    # seed 0 only for resnet50 (90.0 -> 90.2); both seeds for the last step (mean 92.2 -> 93.0)
    assert out["steps"]["resnet50"] == {"seeds": [0], "top1": 90.0, "top1_2x": 90.2, "gain_2x": 0.2,
                                        "at_plateau": True}
    last = out["steps"]["roadmap_separate_downsampling"]
    assert (last["top1"], last["top1_2x"], last["gain_2x"], last["at_plateau"]) == (92.2, 93.0, 0.8, False)
    assert out["epochs"] == 30 and out["epochs_2x"] == 60 and out["top1"]["roadmap_kernel7"] == 88.0
    unfinished = check(study, _study(60, {"roadmap_kernel11": {0: 80.0}}), 0.3)["steps"]["roadmap_kernel11"]
    assert unfinished["seeds"] == [] and "not finished" in unfinished["note"]
    for other in (_study(40, {}), _study(60, {}, lr=0.2)):  # not twice the epochs, or another change too
        with pytest.raises(SystemExit, match="not the first at twice the epochs"):
            check(study, other, 0.3)
    # from the command line, bad input is one line on stderr and exit status 2 (as in the convnext CLI)
    missing = subprocess.run([sys.executable, "benchmarks/study/plateau_check.py", str(tmp_path / "none"),
                              str(tmp_path / "none"), str(tmp_path / "out.json")], cwd=ROOT, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and missing.stderr == f"plateau_check.py: error: {tmp_path / 'none'}: no " \
        "results.json (has the study written its first run?)\n"
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_gpu_check_dry_run_trains_chooses_and_reports(tmp_path):
    """The GPU session's training steps, on the CPU at tiny sizes: three runs at once, the held-out choice, the
    test split for it alone, every roadmap network timed, and a summary that names each."""
    fmnist = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
    if not fmnist.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable,
           "GPU_CHECK_STEPS": "fmnist study roadmap", "TMPDIR": str(tmp_path), "FASHION_MNIST_ROOT": str(fmnist)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, check=True, capture_output=True,
                   timeout=600)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert summary["all_ok"] and set(steps) == {"fmnist", "study_32px_w0.0625", "roadmap", "roadmap_plateau"}
    heldout = steps["fmnist"]["headline"]["heldout_best"]
    assert set(heldout) == {"tiny_30ep", "tiny_30ep_mix", "pico_40ep"}
    assert steps["fmnist"]["headline"]["test"]["chosen"] == max(heldout, key=heldout.get)
    speeds = steps["study_32px_w0.0625"]["headline"]["img_per_s"]
    assert len(speeds) == 17 and all(speeds.values())
    shapes = json.loads((tmp_path / "out" / "study_step_speed.json").read_text())["shapes"]
    assert [(s["size"], s["width_mult"]) for s in shapes] == [(32, 0.0625)]
    assert (tmp_path / "out" / "fmnist_gpu_runs.tar.gz").stat().st_size > 0
    # the roadmap study at --budget gpu (micro sizes here) and its plateau check of the first and last steps
    plateau = steps["roadmap_plateau"]["headline"]
    assert plateau["study_complete"] and plateau["runs_done"] == 3
    assert set(plateau["steps"]) == {"resnet50", "roadmap_separate_downsampling"}
    assert all(s["seeds"] == [0] for s in plateau["steps"].values())
    assert (tmp_path / "out" / "roadmap_gpu.tar.gz").stat().st_size > 0
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what a GPU session can bring back


def test_study_ablation_trains_the_step_with_its_change_and_compares_with_the_study(tmp_path, monkeypatch, capsys):
    """benchmarks/study/ablation.py: the step as the study trains it plus the --arch change, each seed once (a rerun
    trains nothing), and the difference to the study's runs of the unchanged step with its standard error."""
    study = tmp_path / "study"
    rc, _, err = run_cli(["study", "roadmap", "--budget", "micro", "--data", "synthetic", "--steps", "roadmap_gelu",
                          "--seeds", "2", "--out", study, "--work-dir", tmp_path / "study-work"], capsys)
    assert rc == 0, err
    args = ["roadmap_gelu", "ls1", "--arch", "layer_scale_init=1.0", "--budget", "micro", "--data", "synthetic",
            "--seeds", "2", "--jobs", "2", "--study", str(study), "--out", str(tmp_path / "out"), "--work-dir",
            str(tmp_path / "work")]
    cmd = [sys.executable, "benchmarks/study/ablation.py", *args]  # a process of its own: it forks a pool
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
    out = json.loads((tmp_path / "out" / "ls1.json").read_text())
    config = (tmp_path / "work" / "ls1" / "roadmap_gelu-seed1" / "config.yaml").read_text()
    assert "layer_scale_init: 1.0" in config and "dims:" in config  # the change, on the study's scaled widths
    base = json.loads((study / "results.json").read_text())["steps"][0]["top1"]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    var = lambda v: sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)  # noqa: E731
    assert out["seeds"] == [0, 1] and out["study"]["top1"] == base
    assert out["delta_vs_study"] == pytest.approx(mean(out["top1"]) - mean(base), abs=0.011)
    assert out["delta_se"] == pytest.approx((var(out["top1"]) / 2 + var(base) / 2) ** 0.5, abs=0.011)
    # finished seeds are records: a rerun trains nothing (training would recreate the deleted run dirs)
    shutil.rmtree(tmp_path / "work")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
    assert not (tmp_path / "work").exists()
    # a baseline trained under another budget is refused, and so is an unknown field, in one line
    bad = run_script("study/ablation.py", ["roadmap_gelu", "x", "--arch", "bogus=1"], monkeypatch, capsys)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # bad input: one line, 2
    assert bad.stderr.startswith("ablation.py: error: --arch: unknown ArchConfig field")
    other = run_script("study/ablation.py", [*args, "--data", "fashion_mnist", "--work-dir", tmp_path / "w2"],
                       monkeypatch, capsys)
    assert other.returncode == 2 and "not the ablation's baseline" in other.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w2").exists()  # refused before anything trained


def test_ensemble_probe_scores_runs_alone_and_averaged_on_their_held_out_images(tmp_path, monkeypatch, capsys):
    """benchmarks/recipes/ensemble_probe.py: each run alone scores what `convnext eval --holdout` scores for its last
    EMA weights (the same held-out images), a pair's gain is its score over its better member's (with two runs, "all"
    is the pair), and runs that held out different images, or one run named twice, are refused before anything is
    scored."""
    fmnist = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
    if not fmnist.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")

    def train(name: str, seed: int, holdout: int) -> Path:
        rc, _, err = run_cli(["train", "--preset", "small", "--data.dataset", "fashion_mnist", "--data.root", fmnist,
                              "--data.workers", "0", "--data.holdout", holdout, "--data.limit_train", "512",
                              "--data.limit_val", "64", "--opt.epochs", "1", "--runtime.seed", seed, "--runtime.out",
                              tmp_path, "--runtime.run_name", name, "--runtime.progress", "false", "--runtime.plots",
                              "false", "--runtime.tensorboard", "false"], capsys)
        assert rc == 0, err
        return tmp_path / name

    def probe(*argv) -> subprocess.CompletedProcess:
        return run_script("recipes/ensemble_probe.py", argv, monkeypatch, capsys)

    a, b = train("a", 0, 300), train("b", 1, 300)
    out = tmp_path / "probe.json"
    assert probe(a, b, "--out", out, "--data-root", fmnist).returncode == 0
    result = json.loads(out.read_text())
    for run in (a, b):
        rc, stdout, err = run_cli(["eval", run / "last_ema.safetensors", "--dataset", "fashion_mnist", "--data-root",
                                   fmnist, "--holdout", "300", "--workers", "0", "--json"], capsys)
        assert rc == 0, err
        assert result["single_top1"][str(run)] == pytest.approx(json.loads(stdout)["top1"], abs=0.006)
        assert result["weights"][str(run)] == "last_ema.safetensors"
    (pair,) = result["pairs"]
    assert pair["top1"] == result["all_top1"]
    assert pair["gain_over_better"] == pytest.approx(pair["top1"] - max(result["single_top1"].values()), abs=0.006)
    c = train("c", 0, 200)
    bad = probe(a, c, "--out", tmp_path / "bad.json")
    assert bad.returncode == 2 and bad.stderr.startswith("ensemble_probe.py: error: ")
    assert "must all hold out the same" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()
    twice = probe(a, a, "--out", tmp_path / "bad.json")
    assert twice.returncode == 2 and "named twice" in twice.stderr and len(twice.stderr.strip().splitlines()) == 1


def test_arch_speed_times_each_variant_of_the_recipe_and_refuses_bad_variants(tmp_path, monkeypatch, capsys):
    """benchmarks/recipes/arch_speed.py builds each variant as `convnext train --preset small --set ...` would (its
    parameter count is create_model's for those settings), times every variant in every round, reports ratios of
    medians to the first variant, counts each step's FLOPs (forward and backward: three forwards but the stem's
    input gradient) and rates them against a timed matrix product, and refuses an unnamed variant, a bad setting, a
    second batch size or a negative matrix size before timing anything (exit 2, one line, no JSON)."""
    from convnext.models import create_model
    from convnext.models.flops import count_flops
    from convnext.train.muon import takes_muon

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "benchmarks/recipes/arch_speed.py", "--threads", "1", "--rounds", "2", "--steps", "1",
           "--warmup", "1", "--set", "data.dataset=synthetic", "data.image_size=28", "data.batch_size=16",
           "model.overrides.dims=[16,32,64]", "opt.optimizer=adamw"]
    subprocess.run([*cmd, "--variant", "base", "--variant", "d112 model.overrides.depths=[1,1,2]", "--variant",
                    "muon opt.optimizer=muon", "--sgemm", "64", "--out", str(out)], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    result = json.loads(out.read_text())
    sgemm = result["sgemm"]
    assert sgemm["n"] == 64 and len(sgemm["seconds"]) == 2  # one product a round
    assert sgemm["gflop_per_s"] == pytest.approx(2 * 64 ** 3 / (sum(sgemm["seconds"]) / 2) / 1e9, rel=2e-3, abs=0.01)
    assert result["complete"] and result["rounds"] == 2 and result["batch"] == 16
    for name, depths in (("base", (1, 1, 1)), ("d112", (1, 1, 2))):
        v = result["variants"][name]
        model = create_model("convnext_micro_bn_small_input", num_classes=10, dims=(16, 32, 64), depths=depths)
        assert v["params"] == sum(p.numel() for p in model.parameters())
        assert len(v["step_s"]) == 2
        fwd, per = count_flops(model, (3, 28, 28), per_module=True)  # GMACs of one image's forward pass
        assert v["train_flops_per_img"] == pytest.approx((3 * fwd - per["ConvNeXt.stem"]) * 2e9, rel=1e-9)
        rate = v["train_flops_per_img"] * 16 / (sum(v["step_s"]) / 2) / 1e9
        assert v["gflop_per_s"] == pytest.approx(rate, rel=2e-3, abs=0.01)
        assert v["of_sgemm"] == pytest.approx(v["gflop_per_s"] / sgemm["gflop_per_s"], rel=1e-2, abs=2e-3)
    base, d112 = result["variants"]["base"], result["variants"]["d112"]
    # Muon's step adds its Newton-Schulz iterations: five a step on each of its matrices, each two products of the
    # (short side)^2 x long side and one of (short side)^3, on the smaller Gram matrix
    model = create_model("convnext_micro_bn_small_input", num_classes=10, dims=(16, 32, 64))
    shapes = [(p.shape[0], p[0].numel()) for n, p in model.named_parameters() if takes_muon(n, p)]
    ns = sum(5 * (2 * 2 * min(m) ** 2 * max(m) + 2 * min(m) ** 3) for m in shapes)
    assert len(shapes) == 8
    assert result["variants"]["muon"]["train_flops_per_img"] == pytest.approx(
        base["train_flops_per_img"] + ns / 16, rel=1e-9)
    median = lambda t: sum(t) / 2  # noqa: E731 - the median of two rounds
    assert d112["ratio"] == pytest.approx(median(base["step_s"]) / median(d112["step_s"]), rel=2e-3)
    assert d112["ratio_best_of"] == pytest.approx(min(base["step_s"]) / min(d112["step_s"]), rel=2e-3)
    assert base["ratio"] == 1.0
    for variants, message in ((["x=1"], "must start with a name"),
                              (["bad model.overrides.depths=[1,1]"], "variant bad: model.overrides"),
                              (["b64 data.batch_size=8"], "trains batches of 8, the others 16"),
                              (["same", "same"], "named twice"),
                              (["--sgemm=-1"], "--sgemm -1 must be >= 1")):
        variants = [a for v in variants for a in (("--variant", v) if not v.startswith("--") else (v,))]
        bad = run_script("recipes/arch_speed.py", [*cmd[2:], "--variant", "base", *variants, "--out",
                                                   tmp_path / "bad.json"], monkeypatch, capsys)
        assert bad.returncode == 2 and bad.stderr.startswith("arch_speed.py: error: "), bad.stderr
        assert message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad.json").exists()


def _epochs_plot():
    return benchmark_script("recipes/epochs_plot.py")


def _results(root: Path, group: str, runs: dict[str, tuple[list, list]], test: dict | None) -> None:
    data = {"group": group, "runs": [{"run": name, "heldout_top1": model, "heldout_ema_top1": ema}
                                     for name, (model, ema) in runs.items()], "test": test}
    (root / f"{group}.json").write_text(json.dumps(data))


def test_epochs_plot_reads_best_scores_and_the_test_each_rule_read(tmp_path):
    plot = _epochs_plot()
    _results(tmp_path, "each", {"a": ([90.0, 92.5], [91.0, 92.0]),
                                "b": ([91.0, 92.0, 93.0, 92.9], [None, 92.0, 93.5, 93.0])},
             {"runs": {"a": {"test_top1": 92.1}}})  # b was not read
    _results(tmp_path, "best", {"c": ([94.0] * 8, [93.0] * 8), "d": ([93.0] * 8, [93.0] * 8)},
             {"chosen": "c", "test_top1": 93.6})
    rows = plot.collect(["each", "best:d", "best:c"], results=tmp_path)
    assert [(r["run"], r["epochs"], r["heldout_top1"], r["test_top1"]) for r in rows] == [
        ("a", 2, 92.5, 92.1), ("b", 4, 93.5, None), ("d", 8, 93.0, None), ("c", 8, 94.0, 93.6)]
    with pytest.raises(SystemExit, match="no finished run 'x'; its runs: c, d"):
        plot.collect(["best:x"], results=tmp_path)
    with pytest.raises(SystemExit, match="no results for group 'none'"):
        plot.collect(["none"], results=tmp_path)


def test_epochs_plot_fits_points_per_doubling_by_hand():
    plot = _epochs_plot()
    # exactly 90 + 0.5 * log2(epochs): 8 -> 91.5, 16 -> 92.0, 32 -> 92.5
    fit = plot.log_fit([8, 16, 32], [91.5, 92.0, 92.5])
    assert fit == {"intercept": 90.0, "per_doubling": 0.5, "points": 3}
    assert plot.epochs_for(fit, 94.0) == pytest.approx(256.0)  # 90 + 0.5 * 8
    assert plot.epochs_for({"intercept": 95.0, "per_doubling": -0.1}, 94.0) is None
    assert plot.log_fit([44, 44], [93.0, 94.0]) is None  # one epoch count: no slope


def _swap_benchmark(tmp_path, monkeypatch, capsys, script: str) -> dict:
    """A swap benchmark (``benchmarks/SCRIPT``: a module against its stock form, then the recipe's step both ways) at
    its smallest, on synthetic data: its JSON. And the same script with a bad count (--iters 0, then
    --step-rounds -1): one line, exit 2, no JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "swap.json"
    cmd = [sys.executable, f"benchmarks/{script}", "--dataset", "synthetic"]
    subprocess.run([*cmd, "--iters", "1", "--step-rounds", "2", "--step-steps", "1", "--out", str(out)], check=True,
                   cwd=ROOT, env=env, capture_output=True)
    for bad_count in (["--iters", "0"], ["--step-rounds", "-1"]):
        bad = run_script(script, [*cmd[2:], *bad_count, "--out", tmp_path / "bad.json"], monkeypatch, capsys)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad_count[0] in bad.stderr and "--step-rounds >= 0" in bad.stderr
        assert not (tmp_path / "bad.json").exists()
    return json.loads(out.read_text())


def test_activation_layout_times_gelu_both_ways_and_the_recipe_step(tmp_path, monkeypatch, capsys):
    """benchmarks/activation_layout.py: every shape's NHWC-view GELU equals GELU on contiguous memory (the check it
    records), per-step sums are the rows' times by their block counts, the recipe's step is timed with NHWCGELU and
    with nn.GELU put back in every round, and a bad count is one line and exit 2 with no JSON."""
    result = _swap_benchmark(tmp_path, monkeypatch, capsys, "activation_layout.py")
    assert len(result["rows"]) == 7 and all(r["equal_to_nchw_gelu"] for r in result["rows"])
    for network, sums in result["per_step_ms"].items():
        rows = [r for r in result["rows"] if r["network"] == network]
        assert sums["nhwc_ms"] == pytest.approx(sum(r["nhwc_ms"] * r["blocks"] for r in rows), abs=0.01)
    step = result["recipe_step"]
    assert step["rounds"] == 2 and {n: len(t) for n, t in step["step_s"].items()} == {"nhwc_gelu": 2, "stock_gelu": 2}


def test_patchify_gemm_times_both_ways_and_the_recipe_step(tmp_path, monkeypatch, capsys):
    """benchmarks/patchify_gemm.py: every patchify conv of both networks agrees with its GEMM form (the check it
    records), per-step sums are the rows' times, the recipe's step is timed with the GEMMs swapped in and with the
    engine's stock convs in every round, and a bad count is one line and exit 2 with no JSON."""
    result = _swap_benchmark(tmp_path, monkeypatch, capsys, "patchify_gemm.py")
    assert len(result["rows"]) == 7 and all(r["agrees_with_conv"] for r in result["rows"])
    for network, sums in result["per_step_ms"].items():
        rows = [r for r in result["rows"] if r["network"] == network]
        assert sums["gemm_ms"] == pytest.approx(sum(r["gemm_ms"] for r in rows), abs=0.01)
    step = result["recipe_step"]
    assert step["rounds"] == 2
    assert {n: len(t) for n, t in step["step_s"].items()} == {"patchify_gemm": 2, "stock_conv": 2}


def test_muon_shared_times_both_ways_of_muon_under_torchrun(tmp_path, monkeypatch, capsys):
    """benchmarks/muon_shared.py: two-process runs of the engine with Muon's iterations shared and not, each
    timed in every round, their ratio of medians; a bad count is one line and exit 2 with no JSON."""
    fmnist = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FASHION_MNIST_ROOT": str(fmnist)}
    out = tmp_path / "shared.json"
    cmd = [sys.executable, "benchmarks/muon_shared.py", "--batch", "8", "--steps", "4", "--log-every", "1"]
    subprocess.run([*cmd, "--rounds", "1", "--out", str(out)], check=True, cwd=ROOT, env=env, capture_output=True)
    result = json.loads(out.read_text())
    assert result["complete"] and result["rounds"] == 1 and result["global_batch"] == 8
    assert {n: len(v) for n, v in result["img_per_s"].items()} == {"shared": 1, "every": 1}
    median = result["median_img_per_s"]
    assert result["ratio_shared_vs_every"] == pytest.approx(median["shared"] / median["every"], abs=1e-3)
    assert "--opt.muon_distributed true" in result["commands"]["shared"]
    assert "--opt.muon_distributed false" in result["commands"]["every"]
    bad = run_script("muon_shared.py", [*cmd[2:], "--rounds", "0", "--out", tmp_path / "bad.json"], monkeypatch,
                     capsys)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--rounds" in bad.stderr
    assert not (tmp_path / "bad.json").exists()
