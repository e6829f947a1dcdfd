"""The roadmap study: scaling keeps every step's change, recipes, resumability, outputs and the CLI.

Training runs use the micro budget (4 optimizer steps per run, 1/16 widths, 32 px)."""

import ast
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import convnext.study
from convnext.cli import main
from convnext.data.datasets import DATASETS
from convnext.errors import UsageError
from convnext.models.roadmap import RESNET50, ROADMAP
from convnext.study import (BUDGETS, STUDY_DATASETS, StudyPlan, config_diff, get_budget, parent_step, read_records,
                            run_study, scale_config, select_steps, study_data, study_settings, train_config)
from convnext.study.recipe import data_channels
from convnext.study.report import write_outputs
from convnext.study.runner import _check_settings
from convnext.study.scaling import WIDTH_FIELDS
from convnext.train.config import load_config
from convnext.train.loop import Trainer
from convnext.train.state import load_train_state

TWO_STEPS = ("resnet50", "roadmap_modern_recipe")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
COMMITTED_STUDY = Path(__file__).resolve().parents[1] / "results" / "roadmap"


# ---- scaling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mult", [BUDGETS["cpu"].width_mult, BUDGETS["micro"].width_mult, 0.25])
def test_scaled_roadmap_keeps_every_structural_change(mult):
    for i, step in enumerate(ROADMAP[1:], start=1):
        parent = parent_step(i)
        full = config_diff(parent.config, step.config)
        scaled = config_diff(scale_config(parent.config, mult), scale_config(step.config, mult))
        assert set(scaled) == set(full), step.name
        for field, (before, after) in full.items():
            if field in WIDTH_FIELDS:
                # a width change stays a width change, by exactly the multiplier
                s_before, s_after = scaled[field]
                scale = lambda v: None if v is None else (  # noqa: E731
                    [d * mult for d in v] if isinstance(v, list) else v * mult)
                assert s_before == scale(before) and s_after == scale(after), (step.name, field)
            else:
                assert scaled[field] == (before, after), (step.name, field)


def test_scaling_changes_only_widths_and_keeps_hidden_ratio():
    resnet = scale_config(RESNET50, 1 / 8)
    assert resnet.dims == (32, 64, 128, 256) and resnet.stem_dim == 8
    assert set(config_diff(RESNET50, resnet)) == {"dims", "stem_dim"}
    convnext_t = scale_config(ROADMAP[-1].config, 1 / 8)
    assert convnext_t.dims == (12, 24, 48, 96) and convnext_t.mlp_ratio == 4.0
    assert set(config_diff(ROADMAP[-1].config, convnext_t)) == {"dims"}
    # the width-96 step widens the bottleneck by 1.5x at full size and at 1/8
    width96 = next(s for s in ROADMAP if s.name == "roadmap_width96").config
    assert scale_config(width96, 1 / 8).dims[0] / resnet.dims[0] == width96.dims[0] / RESNET50.dims[0] == 1.5


@pytest.mark.parametrize("mult", [0.3, 1 / 128])
def test_scaling_refuses_multipliers_that_round_widths(mult):
    with pytest.raises(ValueError, match="whole"):
        scale_config(RESNET50, mult)


def test_parent_steps_follow_the_paper():
    parents = {s.name: (parent_step(i).name if i else None) for i, s in enumerate(ROADMAP)}
    assert parents == {s.name: s.parent for s in ROADMAP}  # the roadmap's own word, not a guess
    assert parents["resnet50"] is None
    assert parents["roadmap_modern_recipe"] == "resnet50"
    # every kernel size is tried from the kernel-3 move-up step; GELU continues from kernel 7, the one kept
    for k in (5, 7, 9, 11):
        assert parents[f"roadmap_kernel{k}"] == "roadmap_move_up"
    assert parents["roadmap_gelu"] == "roadmap_kernel7"
    assert parents["roadmap_separate_downsampling"] == "roadmap_layernorm"


# the ArchConfig fields each step's change touches, read off its `change` text
CHANGED_FIELDS = {
    "roadmap_modern_recipe": {"layer_scale_init"}, "roadmap_stage_ratio": {"depths"}, "roadmap_patchify": {"stem"},
    "roadmap_depthwise": {"depthwise"}, "roadmap_width96": {"dims", "stem_dim"},
    "roadmap_inverted": {"dims", "mlp_ratio", "stem_dim"}, "roadmap_move_up": {"layout"},
    "roadmap_kernel5": {"kernel_size"}, "roadmap_kernel7": {"kernel_size"}, "roadmap_kernel9": {"kernel_size"},
    "roadmap_kernel11": {"kernel_size"}, "roadmap_gelu": {"activation"}, "roadmap_fewer_activations": {"activations"},
    "roadmap_fewer_norms": {"norms"}, "roadmap_layernorm": {"norm", "conv_bias"},
    "roadmap_separate_downsampling": {"downsample", "head_norm"},
}


def test_every_step_is_its_parent_plus_exactly_its_change():
    index = {s.name: i for i, s in enumerate(ROADMAP)}
    assert set(CHANGED_FIELDS) == set(index) - {"resnet50"}
    for i, step in enumerate(ROADMAP[1:], start=1):
        assert step.parent in index and index[step.parent] < i, step.name  # the parent comes first
        parent = ROADMAP[index[step.parent]]
        diff = config_diff(parent.config, step.config)
        assert diff and set(diff) == CHANGED_FIELDS[step.name], (step.name, sorted(diff))
        # nothing else moved: the parent's config with the changed fields set is the step's config
        assert parent.config.replace(**{k: after for k, (_, after) in diff.items()}) == step.config


def test_study_modules_import_each_other_one_way():
    # every import counts, including those under TYPE_CHECKING and inside functions
    folder = Path(convnext.study.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph[start])

    cyclic = sorted(m for m in graph if reaches(m, m))
    assert not cyclic, {m: graph[m] for m in cyclic}
    assert "report" in graph["runner"] and "runner" not in graph["report"]


# ---- recipes --------------------------------------------------------------------------------------

def test_recipes_differ_as_the_paper_says(tmp_path):
    budget = get_budget("cpu_short")  # the paper's regularisers, per-sample RandAugment
    original = train_config(ROADMAP[0], 0, budget, "fashion_mnist", tmp_path)
    modern = train_config(ROADMAP[1], 0, budget, "fashion_mnist", tmp_path)
    assert original.model.overrides == {"dims": [32, 64, 128, 256], "stem_dim": 8}
    for cfg in (original, modern):  # same data, resolution, steps and seed handling
        assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.limit_train, cfg.opt.epochs) == (64, 32, 5120, 1)
        assert cfg.data.grayscale == "in_chans" and cfg.runtime.resume == "auto"
        # NHWC is how a run computes (faster on CPU for every step), not a study setting: the committed study's
        # recorded settings stay today's (test_the_committed_study_still_resumes_under_its_recorded_settings)
        assert cfg.runtime.channels_last
    assert "runtime.channels_last" not in json.dumps(study_settings(budget, "fashion_mnist"))
    assert not original.aug.randaugment and original.aug.mixup == original.aug.cutmix == 0
    assert original.aug.label_smoothing == 0 and original.reg.drop_path == 0 and not original.reg.ema
    assert original.opt.lr * 32 / original.opt.lr_base_batch == pytest.approx(0.0125)  # 0.1 per 256 images
    assert modern.aug.randaugment and modern.aug.mixup > 0 and modern.aug.cutmix > 0
    assert modern.aug.label_smoothing == 0.1 and modern.reg.drop_path > 0 and modern.opt.weight_decay == 0.05
    assert budget.steps == 160


def test_cpu_budget_regularises_lightly_and_the_same_for_every_modern_step(tmp_path):
    cpu, short = get_budget("cpu"), get_budget("cpu_short")
    assert (cpu.image_size, cpu.width_mult, cpu.batch_size, cpu.epochs) == (32, 0.125, 128, 5)
    assert cpu.train_images == 60000 and cpu.val_images == 10000  # every training image, the whole test split
    assert cpu.steps == 5 * (60000 // 128)
    configs = {s.name: train_config(s, 0, cpu, "fashion_mnist", tmp_path) for s in ROADMAP}
    assert all(c.data.on_device for c in configs.values())  # the batched input path, in the CPU's memory
    # ResNet-50 keeps its original recipe: the same settings as the short study's
    original, original_short = configs["resnet50"], train_config(ROADMAP[0], 0, short, "fashion_mnist", tmp_path)
    assert original.aug == original_short.aug and original.opt.lr == original_short.opt.lr and not original.reg.ema
    # every modern step gets one recipe: shifts and flips, label smoothing and stochastic depth, nothing stronger
    modern = {name: c for name, c in configs.items() if name != "resnet50"}
    assert len({(json.dumps(c.aug.__dict__), c.opt.lr, c.opt.weight_decay, c.reg.drop_path) for c in modern.values()}) == 1
    m = modern["roadmap_separate_downsampling"]
    assert not m.aug.random_resized_crop and m.aug.crop_padding == 2 and m.aug.hflip == 0.5
    assert not m.aug.randaugment and m.aug.mixup == m.aug.cutmix == m.aug.random_erasing == 0
    assert m.aug.label_smoothing == 0.1 and m.reg.drop_path == 0.05 and m.opt.lr == 4e-3 and m.opt.optimizer == "adamw"
    # the recorded settings carry it, so a light study never shares records with a paper-regularised one
    assert study_settings(cpu, "fashion_mnist") != study_settings(cpu.replace(regularisation="paper"), "fashion_mnist")
    with pytest.raises(UsageError, match="regularisation='heavy' is not one of paper, light"):
        cpu.replace(regularisation="heavy")


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_budget_gives_every_step_a_valid_engine_config(tmp_path, budget):
    b = get_budget(budget)
    for step in ROADMAP:
        cfg = train_config(step, 1, b, "fashion_mnist", tmp_path).validate()
        assert cfg.runtime.run_name == f"{step.name}-seed1" and cfg.runtime.seed == 1
        assert cfg.model.overrides["dims"] == [d * b.width_mult for d in step.config.dims]


def test_gpu_budget_keeps_the_short_cpu_studys_networks_and_holds_the_data_on_the_device(tmp_path):
    cpu, gpu = get_budget("cpu_short"), get_budget("gpu")
    assert (gpu.image_size, gpu.width_mult) == (cpu.image_size, cpu.width_mult)  # the same 17 networks
    assert gpu.train_images == 60000 and gpu.val_images == 10000  # every training image, the whole test split
    original = train_config(ROADMAP[0], 0, gpu, "fashion_mnist", tmp_path)
    modern = train_config(ROADMAP[-1], 0, gpu, "fashion_mnist", tmp_path)
    assert original.data.on_device and modern.data.on_device
    # the device has no RandAugment: the modern recipe runs without it and keeps every other regulariser
    assert not modern.aug.randaugment and modern.aug.random_erasing == 0.1 and modern.aug.mixup == 0.8
    cpu_modern = train_config(ROADMAP[-1], 0, cpu, "fashion_mnist", tmp_path)
    assert cpu_modern.aug.randaugment and not cpu_modern.data.on_device
    differ = {k for k, v in cpu_modern.aug.__dict__.items() if getattr(modern.aug, k) != v}
    assert differ == {"randaugment"}
    # and the study's recorded settings say so: a GPU study's records never mix with a CPU study's
    settings = study_settings(gpu, "fashion_mnist")
    assert settings["recipes"]["modern"]["aug.randaugment"] is False and settings["budget"]["on_device"] is True
    assert study_settings(cpu, "fashion_mnist")["recipes"]["modern"]["aug.randaugment"] is True
    with pytest.raises(UsageError, match="set randaugment False"):
        cpu.replace(on_device=True)
    assert cpu.replace(on_device=True, randaugment=False).on_device


def test_bad_budget_and_steps_are_refused():
    with pytest.raises(UsageError, match="total stride"):
        get_budget("cpu").replace(image_size=16)
    with pytest.raises(UsageError, match="unknown budget"):
        get_budget("huge")
    with pytest.raises(UsageError, match="unknown roadmap step"):
        select_steps(["resnet50", "roadmap_kernel13"])
    assert [s.name for s in select_steps(["roadmap_modern_recipe", "resnet50"])] == list(TWO_STEPS)


def test_study_data_are_registry_datasets(tmp_path):
    assert set(STUDY_DATASETS) <= set(DATASETS)
    assert data_channels("fashion_mnist") == DATASETS["fashion_mnist"].channels == 1
    assert data_channels("synthetic") == 3  # drawn in whatever count the model takes: RGB here
    for name in STUDY_DATASETS:
        assert train_config(ROADMAP[0], 0, get_budget("micro"), name, tmp_path).data.dataset == name
    # the hyphenated spelling of earlier versions still names Fashion-MNIST, and only that
    assert study_data("fashion-mnist") == "fashion_mnist" and data_channels("fashion-mnist") == 1
    assert train_config(ROADMAP[0], 0, get_budget("micro"), "fashion-mnist", tmp_path).data.dataset == "fashion_mnist"
    for bad in ("folder", "mnist", "fashion mnist"):
        with pytest.raises(UsageError, match="not supported by the study"):
            study_data(bad)


@pytest.mark.skipif(not (COMMITTED_STUDY / "study.json").exists(), reason="no committed study")
def test_the_committed_study_still_resumes_under_its_recorded_settings(tmp_path):
    # results/roadmap/study.json is the study `--budget cpu --data fashion_mnist` makes, and so is the same file in
    # the form earlier versions wrote (data "fashion-mnist", the optimizer as a description before it became config)
    today = study_settings(get_budget("cpu"), "fashion_mnist")
    old_form = {**today, "data": "fashion-mnist", "recipes": {
        "original": {"optimizer": "SGD, momentum 0.9",
                     **{k: v for k, v in today["recipes"]["original"].items() if k != "opt.optimizer"}},
        "modern": {"optimizer": "AdamW, betas (0.9, 0.999)",
                   **{k: v for k, v in today["recipes"]["modern"].items() if k != "opt.optimizer"}}}}
    for name, write in (("committed", lambda p: shutil.copy(COMMITTED_STUDY / "study.json", p)),
                        ("old_form", lambda p: p.write_text(json.dumps(old_form)))):
        out = tmp_path / name
        out.mkdir()
        write(out / "study.json")
        recorded = (out / "study.json").read_text()
        for data in ("fashion_mnist", "fashion-mnist"):
            _check_settings(out, study_settings(get_budget("cpu"), data))
        assert (out / "study.json").read_text() == recorded  # read in today's form, never rewritten
        for budget, data in ((get_budget("cpu").replace(epochs=2), "fashion_mnist"), (get_budget("cpu"), "synthetic")):
            with pytest.raises(UsageError, match="different settings"):
                _check_settings(out, study_settings(budget, data))


def test_a_study_recorded_before_the_regularisation_field_resumes_as_paper(tmp_path):
    # study.json files written before StudyBudget.regularisation (the short study committed until 2026-12-05) lack
    # the field; they were made with the paper's regularisers, and resume as such, never as a light study
    today = study_settings(get_budget("cpu_short"), "fashion_mnist")
    assert today["budget"].pop("regularisation") == "paper"
    (tmp_path / "study.json").write_text(json.dumps(today))
    _check_settings(tmp_path, study_settings(get_budget("cpu_short"), "fashion_mnist"))
    with pytest.raises(UsageError, match="different settings"):
        _check_settings(tmp_path, study_settings(get_budget("cpu_short").replace(regularisation="light"),
                                                 "fashion_mnist"))


# ---- the study: resume, skip, outputs -------------------------------------------------------------

def _plan(tmp_path, name, data="synthetic", steps=TWO_STEPS, seeds=(0,), budget="micro"):
    return StudyPlan(out=tmp_path / name, work_dir=tmp_path / f"{name}-work", budget=get_budget(budget), data=data,
                     steps=select_steps(steps), seeds=seeds, command=f"test {name}",
                     device="cpu")  # bitwise resume is a CPU promise: on a CUDA machine "auto" would pick the GPU


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted micro study: two steps x two seeds."""
    plan = _plan(tmp_path_factory.mktemp("study"), "reference", seeds=(0, 1))
    return plan, run_study(plan)


@pytest.fixture
def step_counter(monkeypatch):
    """Counts optimizer steps of every run; ``crash_at`` = n makes the n-th step raise (a crash)."""
    state = {"calls": 0, "crash_at": None}
    original = Trainer._train_step

    def counted(self, batches):
        state["calls"] += 1
        if state["crash_at"] is not None and state["calls"] >= state["crash_at"]:
            raise _Crash("simulated crash")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", counted)
    return state


def _events(plan, kind):
    return [json.loads(line) for line in (plan.out / "log.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == kind]


def test_study_resumes_after_crashes_and_never_redoes_finished_runs(tmp_path, step_counter, reference):
    per_run = get_budget("micro").steps
    assert per_run == 4
    ref_plan, _ = reference

    plan = _plan(tmp_path, "crashy")
    # 1: crash during the first (SGD, original recipe) run after 1 checkpointed step
    step_counter.update(calls=0, crash_at=2)
    with pytest.raises(_Crash):
        run_study(plan)
    assert read_records(plan.out) == []
    state = load_train_state(plan.work_dir / "resnet50-seed0")
    assert state["step"] == 1
    assert "momentum_buffer" in state["optimizer"]["state"][0]  # the original recipe trains with SGD

    # 2: resume it to the end, then crash on the first step of the second run (before any checkpoint)
    step_counter.update(calls=0, crash_at=per_run)
    with pytest.raises(_Crash):
        run_study(plan)
    (first,) = read_records(plan.out)
    assert first["step"] == "resnet50" and first["resumed_from"] and first["optimizer_steps"] == per_run
    first_record = plan.out / "records" / "resnet50-seed0.json"
    first_mtime = first_record.stat().st_mtime_ns
    # resuming replays the run exactly: same weights as the uninterrupted reference
    got = load_file(str(plan.work_dir / "resnet50-seed0" / "last.safetensors"))
    want = load_file(str(ref_plan.work_dir / "resnet50-seed0" / "last.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    ref_top1 = {r["step"]: r["top1"] for r in read_records(ref_plan.out) if r["seed"] == 0}
    assert first["top1"] == ref_top1["resnet50"]

    # 3: the finished run is skipped; only the second run trains, from scratch, for its full budget
    step_counter.update(calls=0, crash_at=None)
    results = run_study(plan)
    assert step_counter["calls"] == per_run
    assert first_record.stat().st_mtime_ns == first_mtime
    starts = [(e["step"], e["seed"]) for e in _events(plan, "run_start")]
    assert starts == [("resnet50", 0), ("resnet50", 0), ("roadmap_modern_recipe", 0), ("roadmap_modern_recipe", 0)]
    second = next(r for r in read_records(plan.out) if r["step"] == "roadmap_modern_recipe")
    assert second["resumed_from"] is None and second["top1"] == ref_top1["roadmap_modern_recipe"]
    assert "exp_avg" in load_train_state(plan.work_dir / "roadmap_modern_recipe-seed0")["optimizer"]["state"][0]
    assert results["complete"] and results["runs_done"] == 2

    # 4: a finished study trains nothing and rewrites the same results
    step_counter.update(calls=0)
    again = run_study(plan)
    assert step_counter["calls"] == 0
    assert again["steps"] == results["steps"] and again["wall_time_s"] == results["wall_time_s"]
    assert len(_events(plan, "study_start")) == 4


def test_study_outputs_and_schema(tmp_path, reference):
    plan, results = reference
    saved = json.loads((plan.out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["runs_planned"] == saved["runs_done"] == 4 and saved["complete"]
    assert saved["command"] == "test reference" and saved["settings"]["budget"] == get_budget("micro").to_dict()
    assert saved["wall_time_s"] > 0
    by_name = {s["name"]: s for s in saved["steps"]}
    assert list(by_name) == list(TWO_STEPS)
    for name, row in by_name.items():
        assert row["seeds"] == [0, 1] and len(row["top1"]) == 2
        assert row["top1_mean"] == pytest.approx(sum(row["top1"]) / 2)
        assert row["top1_std"] == pytest.approx(abs(row["top1"][0] - row["top1"][1]) / 2 ** 0.5)
        # params as trained: every tensor of the engine's saved model
        trained = load_file(str(plan.work_dir / f"{name}-seed0" / "last.safetensors"))
        buffers = sum(v.numel() for k, v in trained.items() if "running_" in k or "num_batches" in k)
        assert row["params"] == sum(v.numel() for v in trained.values()) - buffers
        assert row["gmacs"] < row["gmacs_224"]
    # full-size figures: torchvision's ResNet-50 has 25,557,032 parameters
    assert by_name["resnet50"]["full_params"] == 25_557_032 and by_name["resnet50"]["paper_top1"] == 76.1
    modern = by_name["roadmap_modern_recipe"]
    assert modern["parent"] == "resnet50" and modern["delta_paper"] == pytest.approx(2.7)
    assert modern["delta"] == pytest.approx(modern["top1_mean"] - by_name["resnet50"]["top1_mean"])
    stds = (modern["top1_std"], by_name["resnet50"]["top1_std"])
    assert modern["delta_noise"] == pytest.approx(((stds[0] ** 2 + stds[1] ** 2) / 2) ** 0.5)
    table = (plan.out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 3 and "| 76.1 |" in table and "| 78.8 |" in table and "4/4 runs" in table
    assert (plan.out / "roadmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a different budget may not write into this study
    other = _plan(plan.out.parent, "reference")
    other.budget = other.budget.replace(epochs=2)
    with pytest.raises(UsageError, match="different settings"):
        run_study(other)


def test_study_curves_are_every_runs_top1_after_each_pass(tmp_path, reference):
    plan, results = reference
    curves = json.loads((plan.out / "curves.json").read_text())
    assert list(curves) == list(TWO_STEPS) and all(list(seeds) == ["0", "1"] for seeds in curves.values())
    for row in results["steps"]:
        for seed, top1 in zip(row["seeds"], row["top1"]):
            metrics = plan.work_dir / f"{row['name']}-seed{seed}" / "metrics.jsonl"
            epochs = [r["val_top1"] for r in map(json.loads, metrics.read_text().splitlines()) if r["type"] == "epoch"]
            assert curves[row["name"]][str(seed)] == epochs and epochs[-1] == top1  # the last pass is the result
    assert (plan.out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a copy of the outputs without the run directories (a fresh clone of a committed study) keeps its curves, and an
    # epoch logged twice around a crash counts once, the later line
    copy = dataclasses.replace(plan, out=tmp_path / "out", work_dir=tmp_path / "work")
    shutil.copytree(plan.out, copy.out)
    run = copy.work_dir / f"{TWO_STEPS[0]}-seed0"
    run.mkdir(parents=True)
    lines = [{"type": "epoch", "epoch": 0, "val_top1": 11.0}, {"type": "epoch", "epoch": 0, "val_top1": 12.5},
             {"type": "epoch", "epoch": 1, "val_top1": 13.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_outputs(copy, read_records(copy.out), [])
    again = json.loads((copy.out / "curves.json").read_text())
    assert again[TWO_STEPS[0]]["0"] == [12.5, 13.0]
    assert again[TWO_STEPS[0]]["1"] == curves[TWO_STEPS[0]]["1"] and again[TWO_STEPS[1]] == curves[TWO_STEPS[1]]


def test_parallel_jobs_train_every_run_once(tmp_path):
    plan = _plan(tmp_path, "parallel", steps=("roadmap_separate_downsampling",), seeds=(0, 1))
    results = run_study(plan, threads=1, jobs=2)
    assert results["complete"] and [r["seed"] for r in read_records(plan.out)] == [0, 1]
    assert sorted(e["seed"] for e in _events(plan, "run_start")) == [0, 1]
    assert _events(plan, "study_start")[0]["jobs"] == 2


# ---- the command ----------------------------------------------------------------------------------

@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Fashion-MNIST is not installed")
def test_cli_runs_a_micro_study_on_fashion_mnist(tmp_path, capsys):
    out, work = tmp_path / "study", tmp_path / "work"
    args = ["study", "roadmap", "--data", "fashion_mnist", "--budget", "micro", "--seeds", "1",
            "--steps", "roadmap_separate_downsampling", "--out", str(out), "--work-dir", str(work), "--threads", "1"]
    threads = torch.get_num_threads()
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the study's runs only
    printed = capsys.readouterr().out
    assert "study complete: 1/1 runs" in printed and str(out / "results.md") in printed
    results = json.loads((out / "results.json").read_text())
    (row,) = results["steps"]
    assert results["command"] == ("convnext study roadmap --data fashion_mnist --budget micro --seeds 1 "
                                  "--steps roadmap_separate_downsampling")
    assert row["name"] == "roadmap_separate_downsampling" and row["paper_top1"] == 82.0
    assert 0 <= row["top1"][0] <= 100 and results["in_chans"] == 1
    assert results["settings"]["data"] == json.loads((out / "study.json").read_text())["data"] == "fashion_mnist"
    assert read_records(out)[0]["val_count"] == get_budget("micro").val_images
    assert sorted(os.listdir(out)) == ["curves.json", "curves.png", "log.jsonl", "records", "results.json",
                                       "results.md", "roadmap.png", "study.json"]


def test_cli_dry_run_of_the_gpu_budget_on_the_cpu(tmp_path, capsys):
    """The GPU study's configuration (train split on the device, no RandAugment, several runs at once) runs end to
    end on the CPU at micro sizes: what `convnext study roadmap --budget gpu --device cuda --jobs N` does on a GPU."""
    out, work = tmp_path / "study", tmp_path / "work"
    micro = ["--image-size", "32", "--width-mult", "0.0625", "--batch-size", "8", "--train-images", "32",
             "--epochs", "2", "--val-images", "16"]
    args = ["study", "roadmap", "--data", "synthetic", "--budget", "gpu", "--seeds", "1", "--steps",
            "resnet50,roadmap_separate_downsampling", *micro, "--out", str(out), "--work-dir", str(work),
            "--device", "cpu", "--jobs", "2", "--threads", "1"]
    assert main(args) == 0
    assert "study complete: 2/2 runs" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["budget"]["on_device"] is True and results["settings"]["budget"]["epochs"] == 2
    for name in ("resnet50", "roadmap_separate_downsampling"):  # what each run trained with
        cfg = load_config(work / f"{name}-seed0" / "config.yaml")
        assert cfg.data.on_device and not cfg.aug.randaugment and cfg.data.image_size == 32
    assert [r["optimizer_steps"] for r in read_records(out)] == [8, 8]  # 32 images / 8 x 2 epochs


@pytest.mark.parametrize("extra, message", [
    (["--steps", "resnet50,roadmap_kernel13"], "unknown roadmap step"),
    (["--seeds", "0"], "at least one seed"),
    (["--width-mult", "0.3"], "whole number"),
    (["--image-size", "16"], "total stride"),
    (["--data", "fashion-mnist", "--data-root", "/nonexistent/fmnist"], "/nonexistent/fmnist: Fashion-MNIST directory not found; install it (apt-get install dataset-fashion-mnist) "
     "or point the data root at the directory holding it (--data.root for train, --data-root for eval and study)"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    args = ["study", "roadmap", "--budget", "micro", "--data", "synthetic", "--out", str(tmp_path / "o"),
            "--work-dir", str(tmp_path / "w"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
