"""mfdsl.runner.lamb: ForeachLamb (multi-tensor ops) and FusedLamb (the CPU kernel where it
serves): timm's Lamb update to 1e-12 in float64, an exact skip on the device, a fixed
number of operations per step, and an exact resume."""
from __future__ import annotations

import copy
from typing import Dict, List

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from mfdsl.runner.lamb import ForeachLamb, FusedLamb
from mfdsl.runner.step import masked_step

from conftest import same_nested

RTOL = 1e-12  # float64; differences are rounding only (measured ~5e-16 over 200 steps)
# Both forms, each checked against timm's Lamb; on this CPU FusedLamb takes its kernel
# (tests/test_runner_lamb_cpu.py checks that it does, and the kernel itself).
LAMBS = pytest.mark.parametrize("lamb_cls", [ForeachLamb, FusedLamb],
                                ids=["foreach", "fused"])


def _model(n_layers: int = 2, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    layers: List[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Linear(width, width), nn.LayerNorm(width)]
    return nn.Sequential(*layers).double()


def _groups(model: nn.Module, wd: float = 0.05) -> List[Dict]:
    """The runner's split: decayed matrices, undecayed 1-D parameters."""
    ps = list(model.parameters())
    return [dict(params=[p for p in ps if p.ndim > 1], weight_decay=wd),
            dict(params=[p for p in ps if p.ndim <= 1], weight_decay=0.0)]


def _set_grads(models, gen: torch.Generator, scale: float) -> None:
    for ps in zip(*(m.parameters() for m in models)):
        g = torch.randn(ps[0].shape, generator=gen, dtype=torch.float64) * scale
        for p in ps:
            p.grad = g.clone()


def _rel(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return max(float((x - y).abs().max() / x.abs().max())
                   for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("scale", [100.0, 1e-3], ids=["clipping", "not_clipping"])
@pytest.mark.parametrize("options", [
    {}, dict(always_adapt=True), dict(trust_clip=True),
    dict(always_adapt=True, trust_clip=True), dict(bias_correction=False),
    dict(max_grad_norm=None)], ids=lambda o: "-".join(o) or "defaults")
@LAMBS
def test_equals_timm_lamb_over_200_steps_in_float64(lamb_cls, options, scale):
    from timm.optim import Lamb

    ref, ours = _model(), _model()
    opt_ref = Lamb(_groups(ref), lr=1e-2, **options)
    opt = lamb_cls(_groups(ours), lr=1e-2, **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        _set_grads([ref, ours], gen, scale)
        if scale > 1:  # the global norm is far above max_grad_norm: the clip is active
            assert torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in ref.parameters()])) > 10
        opt_ref.step()
        opt.step()
    assert _rel(ref, ours) <= RTOL
    for p, q in zip(ref.parameters(), ours.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = opt_ref.state[p][key], opt.state[q][key]
            assert float((a - b).abs().max()) <= RTOL * float(a.abs().max()), key
    assert [float(g["step"]) for g in opt.param_groups] == [200.0, 200.0]


@LAMBS
def test_group_settings_are_per_group(lamb_cls):
    """lr, weight decay, betas and eps are read per group (timm reads max_grad_norm once)."""
    from timm.optim import Lamb

    def groups(m):
        g = _groups(m, 0.1)
        g[0].update(lr=3e-3, betas=(0.8, 0.99), eps=1e-8)
        g[1].update(lr=1e-2)
        return g

    ref, ours = _model(), _model()
    opt_ref, opt = Lamb(groups(ref)), lamb_cls(groups(ours))
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        _set_grads([ref, ours], gen, 1.0)
        opt_ref.step()
        opt.step()
    assert _rel(ref, ours) <= RTOL


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    return ([p.detach().clone() for p in model.parameters()],
            copy.deepcopy(opt.state_dict()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("always_adapt", [False, True])
@LAMBS
def test_a_skipped_step_leaves_weights_and_state_exactly(lamb_cls, bad, always_adapt):
    model = _model()
    opt = lamb_cls(_groups(model), lr=1e-2, always_adapt=always_adapt)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        _set_grads([model], gen, 1.0)
        opt.step()
    before = _snapshot(model, opt)
    _set_grads([model], gen, 1.0)
    next(model.parameters()).grad[0, 0] = bad
    masked_step(opt, torch.tensor(True))
    assert same_nested(before, _snapshot(model, opt))
    # A finite step then equals the same step taken without the skipped one.
    twin = _model()
    twin_opt = lamb_cls(_groups(twin), lr=1e-2, always_adapt=always_adapt)
    twin.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # no shared moments
    _set_grads([model, twin], gen, 1.0)
    masked_step(opt, torch.tensor(False))
    twin_opt.step()
    assert same_nested(_snapshot(model, opt), _snapshot(twin, twin_opt))


@LAMBS
def test_a_skipped_first_step_leaves_zeros(lamb_cls):
    model = _model()
    opt = lamb_cls(_groups(model), lr=1e-2)
    weights = [p.detach().clone() for p in model.parameters()]
    _set_grads([model], torch.Generator().manual_seed(4), float("nan"))
    masked_step(opt, torch.tensor(True))
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(float(g["step"]) == 0 for g in opt.param_groups)
    assert all(float(v.abs().sum()) == 0 for st in opt.state.values() for v in st.values())


class _OpCount(TorchDispatchMode):
    """Counts the aten operations issued from Python (a foreach op counts once)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not str(func).startswith("profiler."):  # step()'s record_function markers
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops_per_step(lamb_cls: type, n_layers: int, found_inf: bool) -> List[str]:
    model = _model(n_layers)
    opt = lamb_cls(_groups(model), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    _set_grads([model], gen, 100.0)
    opt.step()  # creates the state
    _set_grads([model], gen, 100.0)
    flag = torch.tensor(False)
    with _OpCount() as counter:
        if found_inf:
            masked_step(opt, flag)
        else:
            opt.step()
    return counter.ops


@LAMBS
@pytest.mark.parametrize("found_inf", [False, True], ids=["step", "masked_step"])
def test_operations_per_step_do_not_grow_with_the_tensors(lamb_cls, found_inf):
    few = _ops_per_step(lamb_cls, 5, found_inf)  # 20 parameter tensors
    many = _ops_per_step(lamb_cls, 100, found_inf)  # 400
    assert few == many
    # measured: foreach 30 for step(), 39 through masked_step; fused 4 and 6 (its kernel
    # calls, one per group and one for the gradient norm, are not aten operations)
    assert len(few) <= 45, few


@LAMBS
def test_state_dict_round_trip_continues_identically(lamb_cls, tmp_path):
    a = _model()
    opt_a = lamb_cls(_groups(a), lr=1e-2, trust_clip=True)
    gen = torch.Generator().manual_seed(6)
    for _ in range(10):
        _set_grads([a], gen, 10.0)
        opt_a.step()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    b = _model()
    b.load_state_dict(ck["model"])
    opt_b = lamb_cls(_groups(b), lr=1e-2, trust_clip=True)
    opt_b.load_state_dict(ck["opt"])
    assert all(g["step"].device == p.device and g["step"].dtype == torch.float32
               for g in opt_b.param_groups for p in g["params"][:1])
    for _ in range(10):
        _set_grads([a, b], gen, 10.0)
        opt_a.step()
        opt_b.step()
    assert same_nested(_snapshot(a, opt_a), _snapshot(b, opt_b))


@LAMBS
def test_checkpoints_load_across_timm_lamb_and_foreach_lamb(lamb_cls):
    """The state has timm's names (exp_avg, exp_avg_sq, the group's step): a run saved by
    either continues in the other."""
    from timm.optim import Lamb

    ref, ours = _model(), _model()
    opt_ref = Lamb(_groups(ref), lr=1e-2)
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        _set_grads([ref], gen, 10.0)
        opt_ref.step()
    ours.load_state_dict(ref.state_dict())
    opt = lamb_cls(_groups(ours), lr=1e-2)
    opt.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # no shared moments
    for _ in range(5):
        _set_grads([ref, ours], gen, 10.0)
        opt_ref.step()
        opt.step()
    assert _rel(ref, ours) <= RTOL
    back = Lamb(_groups(_model()), lr=1e-2)
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert float(back.param_groups[0]["step"]) == 10


@pytest.mark.parametrize("scale", [100.0, 1e-3], ids=["clipping", "not_clipping"])
@LAMBS
def test_float32_clips_as_timm_does(lamb_cls, scale):
    """float32 updates equal timm's to rounding, clipping or not. ForeachLamb divides the
    gradients by the clip factor inside torch's fused kernel (its grad_scale), which writes
    them back: p.grad after the step holds the clipped gradient. FusedLamb's kernel builds
    the update u in the gradients' memory: p.grad holds u, which on the undecayed 1-D
    parameters (no trust ratio) is (p_before - p_after) / lr."""
    from timm.optim import Lamb

    ref, ours = _model().float(), _model().float()
    opt_ref = Lamb(_groups(ref), lr=1e-2)
    opt = lamb_cls(_groups(ours), lr=1e-2)
    gen = torch.Generator().manual_seed(8)
    for _ in range(50):
        for p, q in zip(ref.parameters(), ours.parameters()):
            g = torch.randn(p.shape, generator=gen) * scale
            p.grad, q.grad = g.clone(), g.clone()
        grads = [p.grad for p in ours.parameters()]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        clipped = torch._foreach_div(grads, (norm / 1.0).clamp(min=1.0))
        before = [p.detach().clone() for p in ours.parameters()]
        opt_ref.step()
        opt.step()
        if lamb_cls is ForeachLamb:
            # tolerance: one float32 division each (the fused kernel's and _foreach_div's
            # may round differently by an ulp or so): a few eps, 1e-6 ~ 8 float32 eps
            assert all(torch.allclose(p.grad, c, rtol=1e-6, atol=0)
                       for p, c in zip(ours.parameters(), clipped))
        else:
            for p, b in zip(ours.parameters(), before):
                if p.ndim == 1:
                    # tolerance: p's float32 rounding (|p| <= ~2: 2.4e-7) over lr 1e-2
                    assert torch.allclose(p.grad, (b - p.detach()) / 1e-2, rtol=0,
                                          atol=1e-4)
    assert _rel(ref, ours) <= 1e-5  # float32 rounding (measured ~2e-7)


@LAMBS
def test_a_loss_scalers_scaled_gradients_give_timms_update(lamb_cls):
    """Under torch's GradScaler the optimizer gets the scale and found_inf (its
    _step_supports_amp_scaling path) and divides the scaled gradients itself: the update
    is timm's on the unscaled ones, and an overflowing step is skipped."""
    from timm.optim import Lamb

    ref, ours = _model(), _model()
    opt_ref, opt = Lamb(_groups(ref), lr=1e-2), lamb_cls(_groups(ours), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    scaler.scale(torch.ones(()))  # the scale tensor exists from the first scale()
    gen = torch.Generator().manual_seed(9)
    for i in range(20):
        _set_grads([ref, ours], gen, 10.0)
        for q in ours.parameters():
            q.grad.mul_(scaler.get_scale())
        if i == 7:  # an overflow: skipped, and the scale goes down
            next(ours.parameters()).grad[0, 0] = float("inf")
            before = [q.detach().clone() for q in ours.parameters()]
            scaler.step(opt)
            scaler.update()
            assert all(torch.equal(a, b) for a, b in zip(before, ours.parameters()))
            assert scaler.get_scale() == 2.0 ** 9
            continue
        opt_ref.step()
        scaler.step(opt)
        scaler.update()
    assert _rel(ref, ours) <= RTOL
    assert [float(g["step"]) for g in opt.param_groups] == [19.0, 19.0]
