"""--opt.optimizer muon (train/muon.py): Muon for the hidden layers' weight matrices, AdamW for the rest.

References: torch.optim.Muon (the same arithmetic on a 2-D parameter), torch.optim.AdamW (the other half), the SVD
(what the Newton-Schulz iteration approximates) and hand-computed momentum."""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from convnext.errors import UsageError
from convnext.models import create_model
from convnext.train import preset
from convnext.train.muon import MatrixMuon, MuonWithAdamW, orthogonalize, orthogonalize_flops, share_out, takes_muon
from convnext.train.optim import build_optimizer, build_scheduler

from train_helpers import NO_AUG, assert_resumes_bitwise, run_dir, tiny_config, weights

HYPER = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}


def _steps(opt, params, grads):
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp
        opt.step()


@pytest.mark.parametrize("shape, layout", [((8, 5), torch.contiguous_format), ((5, 8), torch.contiguous_format),
                                           ((6, 4, 2, 2), torch.contiguous_format), ((6, 4, 2, 2), torch.channels_last),
                                           ((12, 6, 1, 1), torch.channels_last)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_bf16_matches_torch_muon_on_the_kernel_matrix(shape, layout, nesterov):
    """In bf16 a kernel (out, in, kh, kw) moves exactly as torch.optim.Muon moves its (out, in*kh*kw) matrix, in
    either memory format."""
    torch.manual_seed(0)
    w = torch.randn(shape)
    grads = [torch.randn(shape) for _ in range(3)]
    a = nn.Parameter(w.clone().contiguous(memory_format=layout) if w.ndim == 4 else w.clone())
    b = nn.Parameter(w.clone().reshape(shape[0], -1))
    _steps(MatrixMuon([a], ns_dtype=torch.bfloat16, nesterov=nesterov, **HYPER), [a],
           [[g.clone().contiguous(memory_format=layout) if g.ndim == 4 else g.clone()] for g in grads])
    _steps(torch.optim.Muon([b], nesterov=nesterov, **HYPER), [b], [[g.reshape(shape[0], -1).clone()] for g in grads])
    assert torch.equal(a.detach().reshape(shape[0], -1), b.detach())
    assert a.shape == shape and (a.ndim < 4 or a.is_contiguous(memory_format=layout))


@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (30, 30)])
def test_fp32_iteration_approximates_the_orthogonal_factor(shape):
    """G = U S V^T with singular values spread over 20x: the iteration gives ~U V^T (singular values pushed into
    Muon's ~0.7-1.2 band, the same singular vectors), in fp32 as in bf16."""
    torch.manual_seed(1)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1.3, 0, k)) @ v.T
    polar = u @ v.T
    for dtype in (torch.float32, torch.bfloat16):
        o = orthogonalize(g, (3.4445, -4.775, 2.0315), 5, 1e-7, dtype).float()
        assert o.shape == g.shape
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.5 and s.max() < 1.3, (dtype, s.min(), s.max())
        cos = (o * polar).sum() / (o.norm() * polar.norm())
        assert cos > 0.97, (dtype, cos)
    assert (orthogonalize(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
            - orthogonalize(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.bfloat16).float()).abs().max() < 0.05


def test_momentum_and_decay_by_hand():
    """One step from rest without Nesterov: buffer (1 - m) g, weight w (1 - lr wd) - lr 0.2 sqrt(max(A, B)) O(buf);
    the iteration must not scale the buffer itself."""
    torch.manual_seed(2)
    w, g = torch.randn(4, 6), torch.randn(4, 6)
    p = nn.Parameter(w.clone())
    opt = MatrixMuon([p], nesterov=False, momentum=0.9, **HYPER)
    p.grad = g.clone()
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert torch.allclose(buf, 0.1 * g, rtol=1e-6, atol=0)
    o = orthogonalize(0.1 * g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    expected = w * (1 - 0.02 * 0.1) - 0.02 * 0.2 * 6 ** 0.5 * o
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6)


def test_routing_of_the_parameters():
    model = create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1)
    muon = {n for n, p in model.named_parameters() if takes_muon(n, p)}
    assert muon == {f"stages.{s}.blocks.0.pwconv{k}.weight" for s in range(3) for k in (1, 2)} | {
        "stages.1.downsample.conv.weight", "stages.2.downsample.conv.weight"}
    # ResNet-50's dense 3x3 convs are matrices of in*9 columns; its stem and head stay with AdamW
    resnet = create_model("resnet50", num_classes=10)
    names = {n for n, p in resnet.named_parameters() if takes_muon(n, p)}
    assert any(n.endswith("dwconv.weight") for n in names) and not any(n.startswith(("stem.", "head.")) for n in names)
    assert all(p.ndim == 4 for n, p in resnet.named_parameters() if n in names)


def test_each_half_is_its_reference_optimizer_and_the_schedule_drives_both():
    torch.manual_seed(3)
    model = create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1)
    ref = create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1)
    ref.load_state_dict(model.state_dict())
    opt = build_optimizer(model, 4e-3, 0.05, name="muon")
    assert isinstance(opt, MuonWithAdamW)
    sched = build_scheduler(opt, 4e-3, 1e-5, 2, 10)
    named = dict(ref.named_parameters())
    ref_muon = MatrixMuon([named[n] for n, p in model.named_parameters() if takes_muon(n, p)], lr=4e-3,
                          weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    adam_decay = [named[n] for n, p in model.named_parameters() if not takes_muon(n, p) and p.ndim > 1]
    adam_plain = [named[n] for n, p in model.named_parameters() if not takes_muon(n, p) and p.ndim <= 1]
    ref_adamw = torch.optim.AdamW([{"params": adam_decay, "weight_decay": 0.05},
                                   {"params": adam_plain, "weight_decay": 0.0}], lr=4e-3, fused=True)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for step in range(3):
        for m in (model, ref):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        lr = opt.param_groups[0]["lr"]
        assert all(g["lr"] == lr for g in opt.muon.param_groups + opt.adamw.param_groups)
        for o in (ref_muon, ref_adamw):
            for g in o.param_groups:
                g["lr"] = lr
        opt.step()
        sched.step()
        ref_muon.step()
        ref_adamw.step()
    assert all(torch.equal(p, named[n]) for n, p in model.named_parameters())
    # the schedule's step 2 (0-based), the first after 2 warmup steps of 10, in both halves
    assert lr == pytest.approx(1e-5 + (4e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0 / 8)))
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(1e-5 + (4e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 8)))


def test_state_dict_round_trip_gives_the_same_next_step():
    torch.manual_seed(4)
    make = lambda: create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1)  # noqa: E731
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    oa = build_optimizer(a, 4e-3, 0.05, name="muon")
    for _ in range(2):
        a.zero_grad()
        nn.functional.cross_entropy(a(x), y).backward()
        oa.step()
    b.load_state_dict(a.state_dict())
    ob = build_optimizer(b, 4e-3, 0.05, name="muon")
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as from a file: load_state_dict keeps the tensors it gets
    assert len(ob.param_groups) == len(oa.param_groups)
    assert all(g is h for g, h in zip(ob.param_groups, ob.muon.param_groups + ob.adamw.param_groups))
    for m, o in ((a, oa), (b, ob)):
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="Muon"):
        ob.load_state_dict(torch.optim.AdamW(b.parameters()).state_dict())


def test_engine_resumes_bitwise_in_channels_last(tmp_path):
    make = lambda out, **o: tiny_config(out, **{"opt.optimizer": "muon", "runtime.channels_last": True, **o})  # noqa
    assert_resumes_bitwise(make, tmp_path, stop_at=5)


def test_bad_momentum_is_a_usage_error():
    with pytest.raises(UsageError, match=r"opt.muon_momentum=1.0 must be in \[0, 1\)"):
        preset("small").replace({"opt.optimizer": "muon", "opt.muon_momentum": 1.0})
    with pytest.raises(UsageError, match="muon"):
        preset("small").replace({"opt.optimizer": "lion"})


def test_momentum_follows_a_change_of_memory_format():
    """A run resumed with the other --runtime.channels_last: the buffer saved in one layout still lines up with the
    kernel's columns in the other, so the step is the one the unchanged layout takes."""
    torch.manual_seed(5)
    w, grads = torch.randn(6, 4, 2, 2), [torch.randn(6, 4, 2, 2) for _ in range(2)]
    a, b = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    oa, ob = MatrixMuon([a], **HYPER), MatrixMuon([b], **HYPER)
    _steps(oa, [a], [[grads[0].clone()]])
    _steps(ob, [b], [[grads[0].clone()]])
    b.data = b.data.contiguous(memory_format=torch.channels_last)
    _steps(oa, [a], [[grads[1].clone()]])
    _steps(ob, [b], [[grads[1].contiguous(memory_format=torch.channels_last)]])
    assert ob.state[b]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_step_takes_a_closure_like_torch_optimizers():
    """step(closure) evaluates the closure with gradients on and returns its loss, for both optimizers."""
    torch.manual_seed(6)
    model = create_model("convnext_micro_bn_small_input", num_classes=10, in_chans=1)
    opt = build_optimizer(model, 4e-3, 0.05, name="muon")
    x, y = torch.randn(2, 1, 28, 28), torch.randint(0, 10, (2,))

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert loss.requires_grad and torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.ndim > 1)
    w = nn.Parameter(torch.randn(4, 3))
    assert MatrixMuon([w], **HYPER).step(lambda: (w ** 2).sum().backward() or torch.tensor(1.0)) == 1.0


def test_an_lr_past_float32_sends_the_weights_to_nan_inf_where_torch_muon_raises():
    """An lr of 1e300 is inf in float32. torch.optim.Muon raises converting it; MatrixMuon applies it, so the weights
    go NaN/Inf as AdamW's do and the engine's guard ends the run as TrainingDiverged (test_resume_policy.py). An lr in
    range takes the ordinary path, bit for bit."""
    torch.manual_seed(7)
    grad = torch.randn(8, 4)
    w = nn.Parameter(torch.randn(8, 4))
    w.grad = grad.clone()
    MatrixMuon([w], lr=1e300, weight_decay=0.05, adjust_lr_fn="match_rms_adamw").step()
    assert not torch.isfinite(w).any()
    ref = nn.Parameter(torch.randn(8, 4))
    ref.grad = grad.clone()
    with pytest.raises(RuntimeError, match="overflow"):
        torch.optim.Muon([ref], lr=1e300, weight_decay=0.05, adjust_lr_fn="match_rms_adamw").step()
    a = nn.Parameter(torch.randn(8, 4))
    b = nn.Parameter(a.detach().clone())
    a.grad, b.grad = grad.clone(), grad.clone()
    MatrixMuon([a], lr=1e30, weight_decay=0.0, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.bfloat16).step()
    torch.optim.Muon([b], lr=1e30, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_share_out_balances_the_iterations_the_same_way_on_every_process():
    costs = [orthogonalize_flops(*shape, 5) for shape in ((384, 192), (192, 384), (192, 384), (96, 192), (192, 96),
                                                          (96, 192), (96, 48), (48, 96))]
    # the three large matrices (~354 MFLOP each) first: two to rank 0 and 1, the third to the lighter one, ...
    assert share_out(costs, 2) == [0, 1, 0, 1, 1, 1, 1, 1]
    assert orthogonalize_flops(384, 192, 5) == orthogonalize_flops(192, 384, 5) == (
        5 * (4 * 192 ** 2 * 384 + 2 * 192 ** 3))
    loads = [sum(c for c, r in zip(costs, share_out(costs, 2)) if r == rank) for rank in (0, 1)]
    assert max(loads) == 2 * costs[0]  # no split does better: one of the ranks gets two of the large three
    assert share_out(costs, 1) == [0] * 8 and share_out([], 3) == []
    assert sorted(share_out([5, 5, 5], 3)) == [0, 1, 2]


RANKS = """
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
import convnext.train.muon as muon

dist.init_process_group("gloo")
calls, real = [], muon.orthogonalize
muon.orthogonalize = lambda g, *a: calls.append(tuple(g.shape)) or real(g, *a)
params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
          for i, s in enumerate(SHAPES)]
opt = muon.MatrixMuon(params, lr=1e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw", distributed=True)
for step in range(2):
    for i, p in enumerate(params):  # the same gradients on every process, as data parallelism averages them
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
    opt.step()
out = {f"p{i}": p.detach().contiguous() for i, p in enumerate(params)}
save_file({**out, "calls": torch.tensor(len(calls))}, f"{sys.argv[1]}/rank{dist.get_rank()}.safetensors")
dist.destroy_process_group()
"""
SHAPES = [(96, 48), (48, 96), (192, 384), (384, 192), (64, 32, 2, 2), (8, 8)]


def test_distributed_muon_shares_the_iterations_and_gives_every_process_the_same_bits(tmp_path):
    """Two gloo processes under torchrun, each orthogonalising its share_out of six matrices (a conv kernel among
    them) for two steps: both end with the weights of one process doing all of them, bit for bit, and together they
    ran each matrix's iterations once a step."""
    from safetensors.torch import load_file

    script = tmp_path / "ranks.py"
    script.write_text(f"SHAPES = {SHAPES!r}\n" + RANKS)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path)], check=True, capture_output=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    params = [nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in enumerate(SHAPES)]
    opt = MatrixMuon(params, lr=1e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw", distributed=True)
    for step in range(2):  # no process group here: every matrix on this process
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
        opt.step()
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for r in ranks:
        for i, p in enumerate(params):
            assert torch.equal(r[f"p{i}"], p.detach()), i
    owner = share_out([orthogonalize_flops(s[0], math.prod(s[1:]), 5) for s in SHAPES], 2)
    assert [int(r["calls"]) for r in ranks] == [2 * owner.count(0), 2 * owner.count(1)]
    assert 0 < owner.count(0) < len(SHAPES)


def test_a_two_process_run_gives_the_same_weights_with_or_without_sharing_the_iterations(tmp_path):
    from test_distributed import torchrun_train

    common = {**NO_AUG, "data.synthetic_samples": 32, "data.batch_size": 4, "opt.epochs": 1,
              "opt.warmup_epochs": 0.0, "opt.optimizer": "muon"}
    for shared in (True, False):
        cfg = tiny_config(tmp_path / str(shared), **common, **{"opt.muon_distributed": shared})
        cfg.save(tmp_path / f"{shared}.yaml")
        assert torchrun_train(tmp_path / f"{shared}.yaml")["steps"] == 4
    a, b = (weights(run_dir(tmp_path / str(shared)) / "last.safetensors") for shared in (True, False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharing_the_iterations_may_change_on_resume_and_muons_momentum_may_not():
    from convnext.train.config import resume_conflicts

    cfg = preset("small")
    saved = cfg.to_dict()
    assert cfg.opt.optimizer == "muon" and cfg.opt.muon_distributed is True
    assert resume_conflicts(saved, cfg.replace({"opt.muon_distributed": False})) == []  # the same numbers either way
    assert resume_conflicts(saved, cfg.replace({"opt.muon_momentum": 0.9})) == ["opt.muon_momentum 0.95 -> 0.9"]
    del saved["opt"]["muon_distributed"]  # a run saved before the field existed
    assert resume_conflicts(saved, cfg) == []
