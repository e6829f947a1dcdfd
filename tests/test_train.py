import math
import sys

import pytest
import torch
from torch import nn

from convnext.checkpoint import load_model
from convnext.cli import main
from convnext.errors import UsageError
from convnext.models import create_model
from convnext.models.layers import LayerNorm2d
from convnext.train import TrainConfig, TrainingDiverged, load_config, lr_at, param_groups, preset, train
from convnext.train.config import read_config_file
from convnext.train.logging import read_metrics
from convnext.train.ema import make_ema
from convnext.train.distributed import DistInfo
from convnext.train.loop import Trainer
from convnext.train.model import build_model
from convnext.train.optim import build_optimizer, build_scheduler
from convnext.train.state import find_resume_state, load_train_state
from convnext.train.step import train_step
from train_helpers import NO_AUG, comparable, run_cli, run_dir, tiny_config, weights


# ---- config ------------------------------------------------------------------------------------

def test_paper_preset_is_the_papers_recipe():
    c = preset("paper")
    assert (c.opt.lr, c.opt.lr_base_batch, c.opt.weight_decay, c.opt.betas) == (4e-3, 4096, 0.05, (0.9, 0.999))
    assert (c.opt.epochs, c.opt.warmup_epochs, c.opt.clip_grad, c.opt.layer_decay) == (300, 20, None, 1.0)
    a = c.aug
    assert (a.randaugment_n, a.randaugment_m, a.randaugment_mstd) == (2, 9, 0.5)
    assert (a.mixup, a.cutmix, a.random_erasing, a.label_smoothing, a.crop_ratio) == (0.8, 1.0, 0.25, 0.1, 0.875)
    assert (c.reg.ema, c.reg.ema_decay, c.data.image_size) == (True, 0.9999, 224)
    # stochastic depth by model size: T 0.1, S 0.4, B 0.5, L 0.5
    for name, rate in [("convnext_tiny", 0.1), ("convnext_small", 0.4), ("convnext_base", 0.5), ("convnext_large", 0.5)]:
        cfg = c.replace({"model.name": name})
        entry_cfg = __import__("convnext").get_config(name)
        # build only the config, not the (large) model
        from convnext.models import get_entry

        assert get_entry(name).paper_drop_path == rate and cfg.reg.drop_path is None and entry_cfg.drop_path_rate == 0
    tiny = build_model(c.replace({"model.overrides": {"depths": [1, 1, 1, 1], "dims": [8, 8, 8, 8]}}), 10, 3)
    assert tiny.cfg.drop_path_rate == 0.1


def test_config_files_yaml_and_toml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: small\nopt:\n  lr: 1.0e-3\n  betas: [0.8, 0.99]\nmodel:\n  overrides: {kernel_size: 5}\n")
    t = tmp_path / "c.toml"
    t.write_text('preset = "small"\n[opt]\nlr = 1e-3\nbetas = [0.8, 0.99]\n[model.overrides]\nkernel_size = 5\n')
    a, b = load_config(y), load_config(t)
    assert a == b and a.opt.lr == 1e-3 and a.opt.betas == (0.8, 0.99) and a.model.overrides == {"kernel_size": 5}
    assert a.model.name == "convnext_micro_bn_small_input"  # from the preset
    c = load_config(y, ["opt.lr=2e-4", "data.batch_size=3", "model.overrides.kernel_size=9", "opt.clip_grad=null"])
    assert (c.opt.lr, c.data.batch_size, c.model.overrides["kernel_size"], c.opt.clip_grad) == (2e-4, 3, 9, None)
    # saved config reloads to the same tree
    c.save(tmp_path / "saved.yaml")
    assert TrainConfig.from_dict(read_config_file(tmp_path / "saved.yaml")) == c


@pytest.mark.parametrize("override,message", [
    ("opt.lrr=1", r"unknown config key 'opt.lrr'; did you mean 'lr'\?"),
    ("optim.lr=1", r"unknown config key 'optim'; did you mean 'opt'\?"),
    ("opt.lr=-1", r"opt.lr=-1.0 must be > 0"),
    ("opt.lr=abc", r"opt.lr='abc' must be a number"),
    ("runtime.amp=fp8", r"runtime.amp='fp8' is not valid; use one of none, bf16, fp16"),
    ("data.batch_size=0", r"data.batch_size=0 must be >= 1"),
    ("data.batch_size=2.5", r"data.batch_size=2.5 must be an integer"),
    ("data.image_size=16", r"smaller than the network's total stride 32"),
    ("model.name=convnext_tny", r"did you mean convnext_tiny"),
    ("model.overrides.kernel_size=4", r"kernel_size=4 must be a positive odd number"),
    ("aug.mixup_prob=1.5", r"aug.mixup_prob=1.5 must be a probability"),
    ("aug.mixup_until=0", r"aug.mixup_until=0.0 must be in \(0, 1\] \(the fraction of the run's epochs"),
    ("aug.mixup_until=1.5", r"aug.mixup_until=1.5 must be in \(0, 1\]"),
    ("opt.warmup_epochs=500", r"opt.warmup_epochs=500.0 must be in \[0, opt.epochs=300\]"),
    ("data.dataset=imagenet", r"use one of folder, fashion_mnist, cifar10, cifar100, synthetic"),
    ("reg.ema=maybe", r"reg.ema='maybe' must be true or false"),
    ("opt.optimizer=lion", r"opt.optimizer='lion' is not valid; use one of adamw, sgd"),
    ("opt.momentum=1.5", r"opt.momentum=1.5 must be in \[0, 1\)"),
    ("data.image_size=225", r"data.image_size=225 is not a multiple of the stem's patch size 4; use 224 or 228"),
    ("data.image_size=30", r"smaller than the network's total stride 32 .*the smallest valid size is 32"),
    ("data.holdout=-1", r"data.holdout=-1 must be >= 0"),
    ("runtime.val_every=-1", r"runtime.val_every=-1 must be >= 0"),
    ("aug.crop_padding=2", r"aug.crop_padding applies without random_resized_crop; set aug.random_resized_crop false"),
])
def test_bad_config_fails_fast_with_a_clear_message(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(None, [override], preset_name="paper")


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["train", "--preset", "small", "--opt.lr", "-1", "--runtime.out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "opt.lr=-1.0 must be > 0" in err
    assert main(["train", "--preset", "small", "--data.dataset", "folder", "--data.root", str(tmp_path / "nope"),
                 "--data.image_size", "32", "--runtime.out", str(tmp_path / "o")]) == 2
    assert "train/CLASS" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["train", "--preset", "small", "--print-config", "--opt.epochs", "7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out


# ---- optimisation --------------------------------------------------------------------------------

def test_warmup_cosine_matches_closed_form():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_scheduler(opt, peak=1e-3, floor=1e-5, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # hand-computed: warmup 1e-3 * (t+1)/4, then 1e-5 + 0.99e-3 * (1 + cos(pi * (t-4)/8)) / 2
    expected = {0: 2.5e-4, 1: 5e-4, 3: 1e-3, 4: 1e-3, 6: 1e-5 + 0.99e-3 * (1 + math.sqrt(0.5)) / 2, 8: 5.05e-4,
                11: 1e-5 + 0.99e-3 * (1 - math.cos(math.pi / 8)) / 2}
    for t, v in expected.items():
        assert lrs[t] == pytest.approx(v, rel=1e-9), t
        assert lr_at(t, 1e-3, 1e-5, 4, 12) == pytest.approx(v, rel=1e-12)


def test_no_weight_decay_on_norms_biases_and_gammas():
    for model in (create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3),
                  create_model("roadmap_modern_recipe", depths=(1, 1, 1, 1), num_classes=3)):
        modules = dict(model.named_modules())
        groups = param_groups(model, weight_decay=0.05)
        seen = 0
        for g in groups:
            for name in g["param_names"]:
                owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
                leaf = name.rsplit(".", 1)[-1]
                should_decay = leaf == "weight" and isinstance(owner, (nn.Conv2d, nn.Linear))
                assert g["weight_decay"] == (0.05 if should_decay else 0.0), name
                if leaf == "gamma" or isinstance(owner, (LayerNorm2d, nn.LayerNorm, nn.BatchNorm2d)):
                    assert g["weight_decay"] == 0.0
                seen += 1
        assert seen == len(list(model.parameters()))
        assert any(g["weight_decay"] == 0 and any(n.endswith("gamma") for n in g["param_names"]) for g in groups) \
            or model.cfg.layer_scale_init is None


def test_sgd_optimizer_one_step_by_hand(tmp_path):
    """opt.optimizer=sgd: torch SGD with momentum over the same no-decay groups; checked by hand."""
    model = create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3)
    opt = build_optimizer(model, lr=0.5, weight_decay=0.1, name="sgd", momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in opt.param_groups)
    decay_of = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert decay_of["stages.0.blocks.0.pwconv1.weight"] == 0.1 and decay_of["stages.0.blocks.0.gamma"] == 0.0
    w, b = model.head.fc.weight, model.head.fc.bias
    before_w, before_b = w.detach().clone(), b.detach().clone()
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    gw, gb = w.grad.clone(), b.grad.clone()
    opt.step()  # first step: momentum buffer = grad (+ decay), update = lr * buffer
    torch.testing.assert_close(w.detach(), before_w - 0.5 * (gw + 0.1 * before_w))
    torch.testing.assert_close(b.detach(), before_b - 0.5 * gb)  # biases: no weight decay
    # and the engine builds it from the config, so train_state.pt carries SGD momentum buffers
    train(tiny_config(tmp_path, **{"opt.optimizer": "sgd", "opt.lr": 0.05, "opt.epochs": 1,
                                   "data.synthetic_samples": 16}))
    state = load_train_state(run_dir(tmp_path))
    assert "momentum_buffer" in state["optimizer"]["state"][0]
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_small_preset_names_a_registered_small_input_model_as_is():
    cfg = preset("small").replace({"data.dataset": "fashion_mnist"})
    # a registered name with no overrides: checkpoints are labelled with the architecture they hold
    assert cfg.model.name == "convnext_micro_bn_small_input" and cfg.model.overrides == {}
    model = build_model(cfg, num_classes=10, in_chans=1)
    assert model.cfg == create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1).cfg
    # 28 px (Fashion-MNIST's own size) fits its stride-2 stem; 27 does not, and the error names 26 and 28
    with pytest.raises(UsageError, match=r"data.image_size=27 is not a multiple of the stem's patch size 2; use 26 or 28"):
        cfg.replace({"data.image_size": 27})


def test_an_unset_image_size_is_the_datasets_own_and_a_dataset_without_one_must_name_it(tmp_path, capsys):
    # the small preset leaves data.image_size unset: Fashion-MNIST trains at its 28 px, CIFAR at its 32 (not
    # resampled to 28), and a size given on the command line wins
    sizes = {dataset: load_config(preset_name="small", overrides={"data.dataset": dataset}).data.image_size
             for dataset in ("fashion_mnist", "cifar10", "cifar100")}
    assert sizes == {"fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
    assert load_config(preset_name="small", overrides={"data.dataset": "cifar10", "data.image_size": 64}) \
        .data.image_size == 64
    # the Python API resolves it when the run starts; the paper preset's 224 stays 224
    assert preset("small").replace({"data.dataset": "cifar10"}).resolved().data.image_size == 32
    assert preset("paper").replace({"data.dataset": "cifar10"}).resolved().data.image_size == 224
    # unset on a dataset with a size the model cannot take: refused when the config is built, naming that size
    with pytest.raises(UsageError, match=r"data.image_size=28 is smaller than the network's total stride 32"):
        preset("paper").replace({"data.dataset": "fashion_mnist", "data.image_size": None})
    # folders and synthetic data have no single size: one line naming the flag, exit 2, nothing written
    for dataset in ("folder", "synthetic"):
        rc, _, err = run_cli(["train", "--preset", "small", "--data.dataset", dataset, "--data.root", tmp_path,
                              "--runtime.out", tmp_path / "runs"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1
        assert f"data.image_size is unset and data.dataset={dataset} has no single image size" in err
        assert "--data.image_size" in err and not (tmp_path / "runs").exists()
    unsized = preset("small").replace({"data.dataset": "synthetic", "runtime.out": str(tmp_path / "api")})
    with pytest.raises(UsageError, match="data.dataset=synthetic has no single image size"):
        train(unsized)
    with pytest.raises(UsageError, match="data.dataset=synthetic has no single image size"):
        Trainer(unsized, DistInfo())  # the engine's own entry (the benchmarks build one directly)
    assert not (tmp_path / "api").exists()


def test_holdout_validates_on_held_out_training_images(tmp_path):
    summary = train(tiny_config(tmp_path, **NO_AUG, **{"opt.epochs": 1, "data.synthetic_samples": 40,
                                                       "data.holdout": 12, "data.batch_size": 4}))
    epochs = [r for r in read_metrics(run_dir(tmp_path) / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs[0]["val_count"] == 12  # the held-out images, not the 10-image val split
    assert epochs[0]["step"] == 28 // 4  # trained on the other 28
    assert summary["best_checkpoint"] is not None


def test_val_every_validates_every_nth_and_the_last_epoch_or_never(tmp_path, monkeypatch):
    validated = []
    original = Trainer._end_epoch

    def spy(self):
        record = original(self)
        validated.append("val_top1" in record)
        return record

    monkeypatch.setattr(Trainer, "_end_epoch", spy)
    summary = train(tiny_config(tmp_path / "every2", **{"opt.epochs": 5, "runtime.val_every": 2}))
    assert validated == [False, True, False, True, True]  # epochs 2 and 4, and the last (5)
    assert summary["best_epoch"] in (1, 3, 4) and summary["final_val_top1"] is not None

    validated.clear()
    out = tmp_path / "never"
    summary = train(tiny_config(out, **{"opt.epochs": 2, "runtime.val_every": 0, "reg.ema": True,
                                        "reg.ema_decay": 0.5}))
    assert validated == [False, False]
    assert summary["final_val_top1"] is None and summary["best_checkpoint"] is None
    assert not (run_dir(out) / "best.safetensors").exists()
    epochs = [r for r in read_metrics(run_dir(out) / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all("val_top1" not in r for r in epochs)
    # the result of such a run: the last weights, and the EMA's own (those of train_state.pt, as a model file)
    state = load_train_state(run_dir(out))
    ema_file = weights(summary["last_ema_checkpoint"])
    assert ema_file.keys() == {k.removeprefix("module.") for k in state["ema"] if k != "n_averaged"}
    for k, v in ema_file.items():
        torch.testing.assert_close(v, state["ema"]["module." + k], rtol=0, atol=0)
    model_file = weights(summary["last_checkpoint"])
    assert any(not torch.equal(model_file[k], ema_file[k]) for k in model_file)  # two different files
    ema_model, info = load_model(summary["last_ema_checkpoint"])
    assert info.train["weights"] == "ema" and info.train["epoch"] == 2


def test_without_ema_no_last_ema_file(tmp_path):
    summary = train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    assert summary["last_ema_checkpoint"] is None and not (run_dir(tmp_path) / "last_ema.safetensors").exists()


def test_layer_decay_scales_and_linear_lr_scaling(tmp_path):
    model = create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    # 4 blocks -> ids: stem 0, blocks 1..4, head 5; scale 0.5 ** (5 - id)
    assert lr_of["stem.conv.weight"] == 0.5 ** 5
    assert lr_of["stages.0.blocks.0.dwconv.weight"] == 0.5 ** 4
    assert lr_of["stages.2.downsample.conv.weight"] == 0.5 ** 2 == lr_of["stages.2.blocks.0.pwconv1.weight"]
    assert lr_of["head.fc.weight"] == 1.0 == lr_of["head.norm.weight"]
    # linear scaling: lr * batch * update_freq / lr_base_batch, checked on the logged lr after warmup
    cfg = tiny_config(tmp_path, **{"opt.lr_base_batch": 4096, "opt.lr": 4e-3, "opt.update_freq": 2,
                                   "opt.warmup_epochs": 0.0, "opt.min_lr": 0.0, "opt.epochs": 1})
    train(cfg)
    steps = [r for r in read_metrics(run_dir(tmp_path) / "metrics.jsonl") if r["type"] == "step"]
    peak = 4e-3 * 16 / 4096
    assert len(steps) == 4
    for r in steps:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, peak, 0.0, 0, 4), rel=1e-9)


# ---- the loop ------------------------------------------------------------------------------------

def test_tiny_model_overfits_a_small_batch(tmp_path):
    cfg = tiny_config(tmp_path, **NO_AUG, **{"data.synthetic_samples": 8, "data.batch_size": 8,
                                              "opt.epochs": 20, "opt.warmup_epochs": 2, "opt.lr": 1e-2,
                                              "opt.weight_decay": 0.0})
    s = train(cfg)
    steps = [r for r in read_metrics(run_dir(tmp_path) / "metrics.jsonl") if r["type"] == "step"]
    assert len(steps) == 20 and s["steps"] == 20 and s["epochs"] == 20
    first, last = steps[0]["loss"], steps[-1]["loss"]
    assert first == pytest.approx(math.log(4), rel=0.2)  # chance level at init
    assert last < 0.1 * first
    assert s["final_val_top1"] == 100.0 and s["val_count"] == 4
    model, info = load_model(run_dir(tmp_path) / "best.safetensors")
    assert info.class_names == [f"class_{i}" for i in range(4)] and info.preprocess.input_size == 32
    assert (run_dir(tmp_path) / "config.yaml").is_file()


def test_ema_equals_hand_computed_average(tmp_path, monkeypatch):
    m = nn.Linear(3, 2)
    ema = make_ema(m, decay=0.75)
    snaps = []
    for i in range(3):
        with torch.no_grad():
            m.weight.add_(float(i + 1))
        snaps.append(m.weight.detach().clone())
        ema.update_parameters(m)
    # the first update copies, then ema = 0.75 * ema + 0.25 * w
    hand = 0.75 * (0.75 * snaps[0] + 0.25 * snaps[1]) + 0.25 * snaps[2]
    torch.testing.assert_close(ema.module.weight, hand, rtol=0, atol=1e-6)

    # and inside the engine: record the weights after every optimizer step, compare with train_state's EMA
    recorded = []
    original = Trainer._train_step

    def spy(self, batches):
        out = original(self, batches)
        recorded.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(Trainer, "_train_step", spy)
    key = "stages.1.blocks.0.pwconv1.weight"
    for warmup, (d1, d2) in ((False, (0.5, 0.5)), (True, (2 / 11, 3 / 12))):  # warmup: min(0.5, (1+n)/(10+n))
        recorded.clear()
        out = tmp_path / f"warmup_{warmup}"
        train(tiny_config(out, **{"reg.ema": True, "reg.ema_decay": 0.5, "reg.ema_warmup": warmup,
                                  "opt.epochs": 1, "data.synthetic_samples": 24}))
        assert len(recorded) == 3
        state = load_train_state(run_dir(out))
        w = [r[key] for r in recorded]
        hand = d2 * (d1 * w[0] + (1 - d1) * w[1]) + (1 - d2) * w[2]
        torch.testing.assert_close(state["ema"]["module." + key], hand, rtol=0, atol=1e-6)
        assert int(state["ema"]["n_averaged"]) == 3


def test_ema_warmup_equals_hand_computed_average():
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = make_ema(m, decay=0.9, warmup=True)
    snaps = []
    for i in range(4):
        with torch.no_grad():
            m[0].weight.add_(float(i + 1))
        m.train()(torch.randn(4, 3))  # moves BN's running stats and its integer num_batches_tracked
        snaps.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        ema.update_parameters(m)
    # decays after 1, 2, 3 updates: min(0.9, (1 + n) / (10 + n)) = 2/11, 3/12, 4/13
    d1, d2, d3 = 2 / 11, 3 / 12, 4 / 13
    for key in ("0.weight", "1.running_mean"):
        w = [s[key] for s in snaps]
        hand = d3 * (d2 * (d1 * w[0] + (1 - d1) * w[1]) + (1 - d2) * w[2]) + (1 - d3) * w[3]
        torch.testing.assert_close(ema.module.state_dict()[key], hand, rtol=0, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 4  # integer buffers follow the model
    # later updates settle on the configured decay
    from convnext.train.ema import ema_warmup_decay
    assert ema_warmup_decay(0.9, 1000) == 0.9 and ema_warmup_decay(0.9999, 0) == pytest.approx(0.1)


def test_update_freq_equals_one_step_over_a_larger_batch(tmp_path):
    # eps = 1 makes AdamW's update nearly linear in the gradient, so the weights expose any gradient
    # difference instead of AdamW's sign-like first step hiding it. Tolerance 1e-6 absolute covers
    # float32 summation order (two half-batch means vs one full-batch mean).
    common = {**NO_AUG, "opt.eps": 1.0, "opt.lr": 0.05, "opt.weight_decay": 0.0, "opt.warmup_epochs": 0.0,
              "opt.epochs": 1, "data.synthetic_samples": 32}
    a = train(tiny_config(tmp_path / "a", **common, **{"data.batch_size": 8, "opt.update_freq": 2}))
    b = train(tiny_config(tmp_path / "b", **common, **{"data.batch_size": 16, "opt.update_freq": 1}))
    assert a["steps"] == b["steps"] == 2
    wa, wb = weights(run_dir(tmp_path / "a") / "last.safetensors"), weights(run_dir(tmp_path / "b") / "last.safetensors")
    init = build_model(tiny_config(tmp_path), 4, 3).state_dict()
    moved = max((wa[k] - init[k]).abs().max().item() for k in wa)
    assert moved > 1e-3  # the weights did change
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    la = [r["loss"] for r in read_metrics(run_dir(tmp_path / "a") / "metrics.jsonl") if r["type"] == "step"]
    lb = [r["loss"] for r in read_metrics(run_dir(tmp_path / "b") / "metrics.jsonl") if r["type"] == "step"]
    assert la == pytest.approx(lb, rel=1e-5)


def test_same_seed_is_bitwise_deterministic_even_with_workers(tmp_path):
    # full augmentation, mixup/cutmix, drop path and EMA: every source of randomness is exercised
    over = {"aug.randaugment": True, "aug.random_erasing": 0.25, "aug.mixup": 0.8, "aug.cutmix": 1.0,
            "reg.drop_path": 0.1, "reg.ema": True, "opt.epochs": 1, "data.synthetic_samples": 16}
    train(tiny_config(tmp_path / "a", **over))
    train(tiny_config(tmp_path / "b", **over, **{"data.workers": 2}))
    wa, wb = weights(run_dir(tmp_path / "a") / "last.safetensors"), weights(run_dir(tmp_path / "b") / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = comparable(read_metrics(run_dir(tmp_path / "a") / "metrics.jsonl"))
    mb = comparable(read_metrics(run_dir(tmp_path / "b") / "metrics.jsonl"))
    assert ma == mb and len(ma) == 3
    train(tiny_config(tmp_path / "c", **over, **{"runtime.seed": 1}))
    wc = weights(run_dir(tmp_path / "c") / "last.safetensors")
    assert not torch.equal(wa["head.fc.weight"], wc["head.fc.weight"])


def test_mixup_until_trains_the_last_epochs_as_a_run_without_mixing(tmp_path):
    mix = {**NO_AUG, "aug.mixup": 0.8, "aug.cutmix": 1.0, "aug.label_smoothing": 0.1, "data.synthetic_samples": 16,
           "opt.epochs": 4, "aug.mixup_until": 0.5}
    plain = {**mix, "aug.mixup": 0.0, "aug.cutmix": 0.0, "aug.mixup_until": 1.0}

    def one_step(over, epoch, name):  # a fresh trainer's first step, taken as in epoch `epoch`
        tr = Trainer(tiny_config(tmp_path / name, **over), DistInfo())
        tr.epoch = epoch
        train_step(tr, [next(iter(tr.train_loader))])
        return {k: v.clone() for k, v in tr.model.state_dict().items()}, tr.epoch_mixer() is not None

    # the epochs that start before half of the 4 are mixed, the two after are not
    assert [one_step(mix, e, f"m{e}")[1] for e in range(4)] == [True, True, False, False]
    # past the fraction a step is the step of a run without Mixup/CutMix (labels smoothed the same), bit for bit
    late, _ = one_step(mix, 2, "late")
    without, _ = one_step(plain, 2, "without")
    early, _ = one_step(mix, 1, "early")
    assert all(torch.equal(late[k], without[k]) for k in late)
    assert not torch.equal(early["head.fc.weight"], without["head.fc.weight"])
    # a whole run logs which epochs were mixed
    train(tiny_config(tmp_path / "run", **{**mix, "opt.epochs": 2}))
    records = [r for r in read_metrics(run_dir(tmp_path / "run") / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["mixed"] for r in records] == [True, False]


def test_nan_step_is_skipped_and_counted(tmp_path, monkeypatch):
    from convnext.models import ConvNeXt

    calls = {"n": 0}
    original = ConvNeXt.forward

    def sometimes_nan(self, x):
        out = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out = out * float("nan")
        return out

    monkeypatch.setattr(ConvNeXt, "forward", sometimes_nan)
    s = train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    assert s["skipped_steps"] == 1 and s["steps"] == 8
    steps = [r for r in read_metrics(run_dir(tmp_path) / "metrics.jsonl") if r["type"] == "step"]
    assert steps[2]["loss"] is None and steps[2]["skipped_steps"] == 1
    assert all(r["loss"] is not None for i, r in enumerate(steps) if i != 2)
    w = weights(run_dir(tmp_path) / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_persistent_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    train(tiny_config(tmp_path, **{"opt.epochs": 1, "data.synthetic_samples": 32}))
    good = load_train_state(run_dir(tmp_path))
    before = (run_dir(tmp_path) / "last.safetensors").read_bytes()
    # resumed with an lr of 1e300 (inf in float32): the first update makes the weights NaN/Inf, every loss
    # after it is NaN (a resume may change the lr; it may not change the data, see test_resume_policy.py)
    bad = tiny_config(tmp_path, **{"opt.epochs": 2, "runtime.resume": "auto", "runtime.max_bad_steps": 3,
                                   "data.synthetic_samples": 32, "opt.lr": 1e300})
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps .* lower --opt.lr.*--runtime.amp none"):
        train(bad)
    assert load_train_state(run_dir(tmp_path))["step"] == good["step"] == 4
    assert (run_dir(tmp_path) / "last.safetensors").read_bytes() == before
    # the CLI turns it into one line and exit status 1
    args = ["train", "--preset", "small", "--model.name", "convnext_atto", "--data.image_size", "32",
            "--set", "model.overrides.depths=[1,1,1,1]",
            "--set", "model.overrides.dims=[8,16,32,64]", "--data.dataset", "synthetic", "--data.synthetic_samples", "32",
            "--data.synthetic_classes", "4", "--data.batch_size", "8", "--data.workers", "0", "--opt.epochs", "2",
            "--runtime.out", str(tmp_path), "--runtime.run_name", "run", "--runtime.progress", "false",
            "--runtime.tensorboard", "false", "--runtime.plots", "false", "--runtime.max_bad_steps", "2",
            "--opt.warmup_epochs", "0.5", "--reg.ema", "false", "--aug.label_smoothing", "0",  # the run's own values:
            # a resume keeps them
            "--opt.lr", "1e300", "--resume", "auto"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("convnext train: failed: TrainingDiverged: training diverged: 2 consecutive")


def test_existing_run_is_never_overwritten_without_asking(tmp_path):
    train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    with pytest.raises(UsageError, match="--resume auto"):
        train(tiny_config(tmp_path, **{"opt.epochs": 1}))
    # resume of a finished run is a no-op that still reports the result
    s = train(tiny_config(tmp_path, **{"opt.epochs": 1, "runtime.resume": "auto"}))
    assert s["steps"] == 8 and s["resumed_from"].endswith("train_state.pt")


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="fewer than one optimizer step"):
        train(tiny_config(tmp_path, **{"data.synthetic_samples": 4, "data.batch_size": 8}))
    with pytest.raises(UsageError, match="runtime.amp=fp16 needs a CUDA device"):
        train(tiny_config(tmp_path, **{"runtime.amp": "fp16", "runtime.device": "cpu"}))
    assert not run_dir(tmp_path).exists()


def test_bf16_autocast_and_channels_last_train(tmp_path):
    s = train(tiny_config(tmp_path, **{"runtime.amp": "bf16", "runtime.channels_last": True, "opt.epochs": 1,
                                       "opt.clip_grad": 1.0}))
    assert s["steps"] == 8 and s["skipped_steps"] == 0 and s["final_val_top1"] is not None


def test_demo_model_channels_last_matches_nchw_and_resumes_bitwise(tmp_path):
    # the `small` preset trains its batch-norm model in channels_last on CPU (with the CPU accelerations): the
    # same run as NCHW up to float reassociation, batch-norm running statistics included, and a run stopped
    # mid-epoch resumes to bitwise the uninterrupted run's weights
    # eps = 1 keeps AdamW's update near-linear in the gradient (see the update_freq test): with the usual eps its
    # sign-like steps turn float-rounding differences in near-zero gradients into lr-sized weight differences
    demo = {"model.name": "convnext_micro_bn_small_input", "model.overrides": {}, "data.image_size": 28,
            "opt.epochs": 2, "data.synthetic_samples": 32, "opt.eps": 1.0, "opt.lr": 0.05}
    train(tiny_config(tmp_path / "nchw", **demo))
    train(tiny_config(tmp_path / "nhwc", **demo, **{"runtime.channels_last": True}))
    a, b = weights(run_dir(tmp_path / "nchw") / "last.safetensors"), weights(run_dir(tmp_path / "nhwc") / "last.safetensors")
    assert "stem.norm.running_var" in a and not torch.equal(a["stem.norm.running_var"], torch.ones(32))
    init = build_model(tiny_config(tmp_path, **demo), 4, 3).state_dict()
    assert max((a[k].float() - init[k].float()).abs().max().item() for k in a) > 1e-2  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    train(tiny_config(tmp_path / "cut", **demo, **{"runtime.channels_last": True, "runtime.max_steps": 5}))
    train(tiny_config(tmp_path / "cut", **demo, **{"runtime.channels_last": True, "runtime.resume": "auto"}))
    c = weights(run_dir(tmp_path / "cut") / "last.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_init_from_rgb_checkpoint_fine_tunes_grayscale_model_with_new_head(tmp_path):
    # model.init goes through load_weights: a 3-channel, 10-class checkpoint initialises a 1-channel,
    # 4-class model (stem kernels summed over RGB, fresh head), each adaptation announced.
    from convnext.checkpoint import save_model
    from convnext.train.model import load_init_weights
    from train_helpers import TINY_ARCH

    src = create_model("convnext_atto", num_classes=10, **{k: tuple(v) for k, v in TINY_ARCH.items()})
    save_model(src, tmp_path / "rgb.safetensors")
    cfg = tiny_config(tmp_path / "out")
    model = build_model(cfg, 4, 1)
    with pytest.warns(UserWarning) as caught:
        load_init_weights(model, str(tmp_path / "rgb.safetensors"))
    text = " ".join(str(w.message) for w in caught)
    assert "stem kernel adapted from 3 to 1" in text and "head.fc keeps its fresh initialisation" in text
    torch.testing.assert_close(model.stem.conv.weight, src.stem.conv.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.stages[0].blocks[0].pwconv1.weight, src.stages[0].blocks[0].pwconv1.weight)


@pytest.mark.parametrize("name, channels_last", [("convnext_micro_bn_small_input", True), ("convnext_atto", False),
                                                 ("resnet50", True)])
def test_validation_runs_the_fused_copy_with_the_models_numbers(name, channels_last, monkeypatch):
    """Epoch-end validation on the CPU evaluates the fused inference copy (BatchNorm, LayerNorm and layer scale
    folded): the same loss and top-1 as the model itself, to float rounding, and the model untouched."""
    from convnext.infer.fuse import InferenceModel
    from convnext.train import distributed as dist_mod
    from convnext.train.accelerate import accelerate_for_training
    from convnext.train.evaluate import evaluate, inference_copy, validate

    torch.manual_seed(0)
    smaller = {"dims": (64, 128, 256, 512), "stem_dim": 16} if name == "resnet50" else {}  # bottlenecks / 4
    model = create_model(name, num_classes=10, in_chans=1, **smaller)
    accelerate_for_training(model, "cpu")  # as the trainer runs it
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():  # trained-looking norms: running statistics and affine parameters off their init values
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3), m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, LayerNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))) for _ in range(3)]
    cpu = torch.device("cpu")
    assert type(inference_copy(model, cpu, "none")) is InferenceModel
    reference = evaluate(model, batches, cpu, channels_last=channels_last)
    evaluated = []  # what validate hands to evaluate: the fused copy, for the model and for its EMA
    monkeypatch.setattr(sys.modules["convnext.train.evaluate"], "evaluate",  # the module: the package's name is
                        lambda net, *a, **k: evaluated.append(type(net)) or evaluate(net, *a, **k))  # the function
    val = validate(model, model, batches, cpu, "none", dist_mod.DistInfo(device=cpu), channels_last)
    assert evaluated == [InferenceModel, InferenceModel]
    assert val["val_loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert val["val_top1"] == reference["top1"] and val["ema_top1"] == reference["top1"]
    assert model.training  # its mode, and every weight and statistic, as before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # reduced precision and other devices evaluate the model itself
    assert inference_copy(model, cpu, "bf16") is model
    assert inference_copy(model, torch.device("meta"), "none") is model
